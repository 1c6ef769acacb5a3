//! Topic-exchange routing: `*` matches one word, `#` zero or more.
//!
//! Binding keys live in a word trie, as in RabbitMQ's topic exchange: one
//! edge per literal word, plus a `*` edge and a `#` edge. A routing key is
//! split once and walked through the trie word by word, carrying the set of
//! nodes still in play (each at most once per word), so a message costs at
//! most words × trie nodes, never exponential in `#` however the binding
//! keys are written. Binding and unbinding touch only the key's own path.

use crate::hash::HashMap;
use std::cell::RefCell;

/// Binding keys and what each one routes to (`T`: a destination).
pub(crate) struct TopicTrie<T> {
    /// `nodes[0]` is the root: the empty binding key ends there.
    nodes: Vec<Node<T>>,
    /// Slots of pruned nodes, reused before `nodes` grows.
    free: Vec<u32>,
}

struct Node<T> {
    literals: HashMap<Box<str>, u32>,
    star: Option<u32>,
    hash: Option<u32>,
    /// Reached through a `#` edge: the `#` may take any further word and
    /// stay here.
    is_hash: bool,
    /// Binding keys whose path runs through (or ends at) this node; the
    /// node goes when none is left.
    keys: u32,
    /// What the binding keys ending here route to.
    targets: Vec<T>,
}

impl<T> Node<T> {
    fn new(is_hash: bool) -> Node<T> {
        Node {
            literals: HashMap::default(),
            star: None,
            hash: None,
            is_hash,
            keys: 0,
            targets: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Edge<'a> {
    Literal(&'a str),
    Star,
    Hash,
}

/// The edges a binding key follows; a run of `#` words means what one
/// `#` means, so it is one edge.
fn edges(binding_key: &str) -> impl Iterator<Item = Edge<'_>> {
    let mut previous = None;
    split_words(binding_key).filter_map(move |w| {
        let edge = match w {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            w => Edge::Literal(w),
        };
        let repeated = edge == Edge::Hash && previous == Some(Edge::Hash);
        previous = Some(edge);
        (!repeated).then_some(edge)
    })
}

/// An empty key has no words (so `*` does not match it), while empty words
/// between dots count (`a.*.c` matches `a..c`), as in RabbitMQ.
fn split_words(key: &str) -> impl Iterator<Item = &str> {
    let words = key.split('.');
    words.take(if key.is_empty() { 0 } else { usize::MAX })
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            nodes: vec![Node::new(false)],
            free: Vec::new(),
        }
    }
}

impl<T> TopicTrie<T> {
    /// Adds a binding key routing to `target`.
    pub(crate) fn insert(&mut self, binding_key: &str, target: T) {
        let mut at = 0;
        self.nodes[0].keys += 1;
        for edge in edges(binding_key) {
            at = match self.child(at, edge) {
                Some(next) => next,
                None => {
                    let next = self.new_node(edge == Edge::Hash);
                    let node = &mut self.nodes[at as usize];
                    match edge {
                        Edge::Literal(w) => {
                            node.literals.insert(w.into(), next);
                        }
                        Edge::Star => node.star = Some(next),
                        Edge::Hash => node.hash = Some(next),
                    }
                    next
                }
            };
            self.nodes[at as usize].keys += 1;
        }
        self.nodes[at as usize].targets.push(target);
    }

    /// Removes one binding key routing to a target `is_target` accepts;
    /// whether there was one. Nodes no key uses any more are pruned.
    pub(crate) fn remove(&mut self, binding_key: &str, is_target: impl Fn(&T) -> bool) -> bool {
        let mut path = vec![(0u32, None)];
        let mut at = 0;
        for edge in edges(binding_key) {
            match self.child(at, edge) {
                Some(next) => {
                    path.push((next, Some(edge)));
                    at = next;
                }
                None => return false,
            }
        }
        let targets = &mut self.nodes[at as usize].targets;
        let Some(i) = targets.iter().position(is_target) else {
            return false;
        };
        targets.swap_remove(i);
        for depth in (0..path.len()).rev() {
            let (id, _) = path[depth];
            let node = &mut self.nodes[id as usize];
            node.keys -= 1;
            if node.keys > 0 || depth == 0 {
                continue;
            }
            let (parent, edge) = (path[depth - 1].0, path[depth].1);
            let parent = &mut self.nodes[parent as usize];
            match edge {
                Some(Edge::Literal(w)) => {
                    parent.literals.remove(w);
                }
                Some(Edge::Star) => parent.star = None,
                Some(Edge::Hash) => parent.hash = None,
                None => {}
            }
            self.nodes[id as usize] = Node::new(false);
            self.free.push(id);
        }
        true
    }

    fn child(&self, at: u32, edge: Edge<'_>) -> Option<u32> {
        let node = &self.nodes[at as usize];
        match edge {
            Edge::Literal(w) => node.literals.get(w).copied(),
            Edge::Star => node.star,
            Edge::Hash => node.hash,
        }
    }

    fn new_node(&mut self, is_hash: bool) -> u32 {
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize].is_hash = is_hash;
                id
            }
            None => {
                self.nodes.push(Node::new(is_hash));
                (self.nodes.len() - 1) as u32
            }
        }
    }

    /// Calls `found` with the target of every binding key `routing_key`
    /// matches (once per binding). Allocates nothing once this thread's
    /// scratch space has grown to the trie's size.
    pub(crate) fn matches(&self, routing_key: &str, mut found: impl FnMut(&T)) {
        SCRATCH.with(|scratch| {
            let mut guard = scratch.borrow_mut();
            let s = &mut *guard;
            if s.seen.len() < self.nodes.len() {
                s.seen.resize(self.nodes.len(), 0);
            }
            s.current.clear();
            let epoch = s.next_epoch();
            self.enter(0, epoch, &mut s.seen, &mut s.current);
            for word in split_words(routing_key) {
                let epoch = s.next_epoch();
                s.next.clear();
                for &id in &s.current {
                    let node = &self.nodes[id as usize];
                    if node.is_hash {
                        self.enter(id, epoch, &mut s.seen, &mut s.next);
                    }
                    if let Some(&next) = node.literals.get(word) {
                        self.enter(next, epoch, &mut s.seen, &mut s.next);
                    }
                    if let Some(next) = node.star {
                        self.enter(next, epoch, &mut s.seen, &mut s.next);
                    }
                }
                std::mem::swap(&mut s.current, &mut s.next);
                if s.current.is_empty() {
                    return;
                }
            }
            for &id in &s.current {
                self.nodes[id as usize].targets.iter().for_each(&mut found);
            }
        });
    }

    /// Puts `id` in `set` unless it is already there for this word, with
    /// the `#` below it (which may match no word at all).
    fn enter(&self, mut id: u32, epoch: u32, seen: &mut [u32], set: &mut Vec<u32>) {
        loop {
            if seen[id as usize] == epoch {
                return;
            }
            seen[id as usize] = epoch;
            set.push(id);
            match self.nodes[id as usize].hash {
                Some(hash) => id = hash,
                None => return,
            }
        }
    }
}

/// Per-thread buffers for [`TopicTrie::matches`]: routing runs on many
/// threads at once under a shared lock, so the trie cannot hold them.
#[derive(Default)]
struct Scratch {
    current: Vec<u32>,
    next: Vec<u32>,
    /// The epoch at which each node last entered a set.
    seen: Vec<u32>,
    epoch: u32,
}

impl Scratch {
    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.seen.fill(0);
            self.epoch = 1;
        }
        self.epoch
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, k: &str) -> bool {
        let mut trie = TopicTrie::default();
        trie.insert(p, ());
        let mut hit = false;
        trie.matches(k, |_| hit = true);
        hit
    }

    #[test]
    fn rabbitmq_examples() {
        assert!(m("a.b.c", "a.b.c"));
        assert!(!m("a.b.c", "a.b"));
        assert!(m("a.*.c", "a.b.c"));
        assert!(!m("a.*.c", "a.c"));
        assert!(m("a.#", "a"));
        assert!(m("a.#", "a.b.c"));
        assert!(m("#", ""));
        assert!(m("#", "a.b"));
        assert!(m("a.#.b", "a.b"));
        assert!(m("a.#.b", "a.x.y.b"));
        assert!(!m("a.#.b", "a.x.y.c"));
        assert!(m("#.b", "b"));
        assert!(!m("*", ""));
        assert!(!m("*.#", ""));
        assert!(!m("#.*.c", "c"));
        assert!(m("a.*.c", "a..c"));
        assert!(!m("*", "a.b"));
        assert!(m("*.#", "a"));
        assert!(!m("", "a"));
        assert!(m("", ""));
        assert!(m("#.#", "a.b"));
        assert!(m("#.#", ""));
        assert!(m("#.*.#", "a"));
        assert!(!m("#.*.#", ""));
        assert!(m("a.#.#.b", "a.b"));
    }

    /// The definition, followed literally (exponential, for small inputs).
    fn reference(pattern: &[&str], words: &[&str]) -> bool {
        if pattern.is_empty() {
            return words.is_empty();
        }
        match pattern[0] {
            "#" => (0..=words.len()).any(|n| reference(&pattern[1..], &words[n..])),
            "*" => !words.is_empty() && reference(&pattern[1..], &words[1..]),
            lit => !words.is_empty() && words[0] == lit && reference(&pattern[1..], &words[1..]),
        }
    }

    fn words(key: &str) -> Vec<&str> {
        split_words(key).collect()
    }

    fn matched(trie: &TopicTrie<usize>, key: &str) -> Vec<usize> {
        let mut out = Vec::new();
        trie.matches(key, |&i| out.push(i));
        out.sort_unstable();
        out
    }

    fn word() -> impl Strategy<Value = String> {
        prop_oneof!["a", "b", "", "\\*", "#"]
    }

    fn key(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof!["a", "b", "c", ""], 0..max).prop_map(|w| w.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(word(), 0..7).prop_map(|w| w.join("."))
    }

    proptest! {
        #[test]
        fn one_pattern_agrees_with_the_definition(p in pattern(), k in key(8)) {
            prop_assert_eq!(m(&p, &k), reference(&words(&p), &words(&k)), "{:?} {:?}", p, k);
        }

        /// Many bindings in one trie, some removed again: each key reaches
        /// exactly the bindings the definition says, once each.
        #[test]
        fn a_trie_of_many_agrees_with_the_definition(
            patterns in proptest::collection::vec(pattern(), 0..24),
            removed in proptest::collection::vec(any::<bool>(), 24),
            keys in proptest::collection::vec(key(8), 1..8),
        ) {
            let mut trie = TopicTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            for (i, p) in patterns.iter().enumerate() {
                if removed[i] {
                    prop_assert!(trie.remove(p, |&t| t == i));
                }
            }
            for k in &keys {
                let expected: Vec<usize> = patterns
                    .iter()
                    .enumerate()
                    .filter(|&(i, p)| !removed[i] && reference(&words(p), &words(k)))
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(matched(&trie, k), expected, "key {:?}", k);
            }
        }
    }

    #[test]
    fn removing_every_key_leaves_an_empty_trie() {
        let mut trie = TopicTrie::default();
        let keys = ["a.b", "a.#", "#.#.a", "*.*", "", "a.b", "#"];
        for (i, k) in keys.iter().enumerate() {
            trie.insert(k, i);
        }
        assert!(!trie.remove("a.c", |_| true));
        assert!(!trie.remove("a.b", |&t| t == 99));
        for (i, k) in keys.iter().enumerate() {
            assert!(trie.remove(k, |&t| t == i));
        }
        assert_eq!(trie.nodes.len() - trie.free.len(), 1, "only the root left");
        assert_eq!(trie.nodes[0].keys, 0);
        assert!(trie.nodes[0].literals.is_empty());
        assert!(trie.nodes[0].star.is_none() && trie.nodes[0].hash.is_none());
        // Pruned slots are reused.
        trie.insert("x.y.z", 0);
        assert_eq!(matched(&trie, "x.y.z"), vec![0]);
    }

    /// Keys the old backtracking matcher took exponential time on: each
    /// finishes in a moment now (no timing asserted; a regression hangs).
    #[test]
    fn many_hashes_and_long_keys() {
        let mut trie = TopicTrie::default();
        let hashes = vec!["#"; 60].join(".");
        let alternating = vec!["#.a"; 60].join(".") + ".b";
        trie.insert(&(hashes.clone() + ".z"), 0);
        trie.insert(&alternating, 1);
        let long = vec!["a"; 127].join(".");
        assert!(matched(&trie, &long).is_empty());
        assert_eq!(matched(&trie, &(long.clone() + ".z")), vec![0]);
        assert_eq!(matched(&trie, &(long + ".b")), vec![1]);
    }
}

//! Topic-exchange patterns: `*` matches one word, `#` zero or more.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Word {
    Literal(String),
    Star,
    Hash,
}

#[derive(Debug, Clone)]
pub struct TopicPattern(Vec<Word>);

impl TopicPattern {
    pub fn parse(pattern: &str) -> TopicPattern {
        TopicPattern(
            split_words(pattern)
                .map(|w| match w {
                    "*" => Word::Star,
                    "#" => Word::Hash,
                    w => Word::Literal(w.to_string()),
                })
                .collect(),
        )
    }

    pub fn matches(&self, routing_key: &str) -> bool {
        let words: Vec<&str> = split_words(routing_key).collect();
        match_words(&self.0, &words)
    }
}

/// An empty key has no words (so `*` does not match it), while empty words
/// between dots count (`a.*.c` matches `a..c`), as in RabbitMQ.
fn split_words(key: &str) -> impl Iterator<Item = &str> {
    let words = key.split('.');
    words.take(if key.is_empty() { 0 } else { usize::MAX })
}

fn match_words(pattern: &[Word], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((Word::Hash, rest)) => {
            if rest.is_empty() {
                return true;
            }
            (0..=words.len()).any(|skip| match_words(rest, &words[skip..]))
        }
        Some((Word::Star, rest)) => !words.is_empty() && match_words(rest, &words[1..]),
        Some((Word::Literal(lit), rest)) => {
            words.first() == Some(&lit.as_str()) && match_words(rest, &words[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, k: &str) -> bool {
        TopicPattern::parse(p).matches(k)
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
    }

    /// The same semantics through a regular-expression-free reference: expand
    /// the pattern into all word-count assignments.
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

    proptest! {
        #[test]
        fn agrees_with_reference(p in proptest::collection::vec(prop_oneof!["a", "b", "\\*", "#"], 1..6),
                                 k in proptest::collection::vec(prop_oneof!["a", "b", "c"], 1..7)) {
            let pattern = p.join(".");
            let key = k.join(".");
            prop_assert_eq!(m(&pattern, &key), reference(&p.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &k.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        }
    }
}

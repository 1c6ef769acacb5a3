//! Headers-exchange matching with RabbitMQ's `x-match` modes.

use amq_protocol::types::{AMQPValue, FieldTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

#[derive(Debug, Clone)]
pub(crate) struct HeadersMatcher {
    mode: Mode,
    /// Binding arguments that take part in matching.
    required: Vec<(String, AMQPValue)>,
}

impl HeadersMatcher {
    /// Builds a matcher from binding arguments; `Err` names a bad `x-match`.
    pub(crate) fn new(arguments: &FieldTable) -> Result<HeadersMatcher, String> {
        let mode = match arguments.inner().get("x-match") {
            None => Mode::All,
            Some(v) => match value_str(v).as_deref() {
                Some("all") => Mode::All,
                Some("any") => Mode::Any,
                Some("all-with-x") => Mode::AllWithX,
                Some("any-with-x") => Mode::AnyWithX,
                _ => {
                    return Err(format!(
                        "Invalid x-match field value {v:?}; expected all, any, all-with-x, or any-with-x"
                    ))
                }
            },
        };
        let with_x = matches!(mode, Mode::AllWithX | Mode::AnyWithX);
        let required = arguments
            .into_iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Ok(HeadersMatcher { mode, required })
    }

    pub(crate) fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let empty = FieldTable::default();
        let headers = headers.unwrap_or(&empty);
        let one = |(k, v): &(String, AMQPValue)| match headers.inner().get(k.as_str()) {
            None => false,
            Some(_) if matches!(v, AMQPValue::Void) => true,
            Some(h) => values_equal(h, v),
        };
        match self.mode {
            Mode::All | Mode::AllWithX => self.required.iter().all(one),
            Mode::Any | Mode::AnyWithX => self.required.iter().any(one),
        }
    }
}

fn value_str(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn value_int(v: &AMQPValue) -> Option<i128> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => n as i128,
        AMQPValue::ShortShortUInt(n) => n as i128,
        AMQPValue::ShortInt(n) => n as i128,
        AMQPValue::ShortUInt(n) => n as i128,
        AMQPValue::LongInt(n) => n as i128,
        AMQPValue::LongUInt(n) => n as i128,
        AMQPValue::LongLongInt(n) => n as i128,
        AMQPValue::Timestamp(n) => n as i128,
        _ => return None,
    })
}

/// RabbitMQ compares header values without their wire type: a short and a
/// long string with the same bytes are equal, as are integers of any width.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    if let (Some(x), Some(y)) = (value_str(a), value_str(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (value_int(a), value_int(b)) {
        return x == y;
    }
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{LongString, ShortString};

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }
    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    #[test]
    fn all_and_any() {
        let all =
            HeadersMatcher::new(&table(&[("a", s("1")), ("b", AMQPValue::LongInt(2))])).unwrap();
        let any = HeadersMatcher::new(&table(&[
            ("x-match", s("any")),
            ("a", s("1")),
            ("b", s("2")),
        ]))
        .unwrap();
        let h = table(&[
            ("a", AMQPValue::ShortString("1".into())),
            ("b", AMQPValue::ShortInt(2)),
        ]);
        assert!(all.matches(Some(&h)));
        let partial = table(&[("a", s("1"))]);
        assert!(!all.matches(Some(&partial)));
        assert!(any.matches(Some(&partial)));
        assert!(!any.matches(None));
    }

    #[test]
    fn x_headers_only_with_x() {
        let args = table(&[("x-match", s("all")), ("x-k", s("v"))]);
        let plain = HeadersMatcher::new(&args).unwrap();
        assert!(plain.matches(None), "x- arguments are ignored by all");
        let with_x =
            HeadersMatcher::new(&table(&[("x-match", s("all-with-x")), ("x-k", s("v"))])).unwrap();
        assert!(!with_x.matches(None));
        assert!(with_x.matches(Some(&table(&[("x-k", s("v"))]))));
    }

    #[test]
    fn bad_x_match_is_refused() {
        assert!(HeadersMatcher::new(&table(&[("x-match", s("some"))])).is_err());
    }
}

//! A view over the raw basic-class properties of a content header.
//!
//! The broker passes the publisher's property bytes through unchanged (field
//! tables re-encoded by amq-protocol would come back sorted and retyped), and
//! reads only the few properties routing needs, by offset.

use super::field_table::{self, TableError};
use super::method::Reader;
use amq_protocol::protocol::basic::{parse_properties, AMQPProperties};
use amq_protocol::types::FieldTable;
use bytes::{BufMut, Bytes, BytesMut};
use std::ops::Range;

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;

/// Offsets of the properties the broker looks at, within the raw bytes.
#[derive(Debug, Default, Clone)]
pub struct PropertiesView {
    pub delivery_mode: u8,
    pub priority: Option<u8>,
    /// The whole table, its 4-byte length included.
    pub headers: Option<Range<usize>>,
    /// The string contents, without the length octet.
    pub reply_to: Option<Range<usize>>,
    pub expiration: Option<Range<usize>>,
    pub user_id: Option<Range<usize>>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct MalformedProperties(pub TableError);

impl PropertiesView {
    /// Scans `raw` (property flags onwards) without allocating.
    pub fn scan(raw: &[u8]) -> Result<PropertiesView, MalformedProperties> {
        Self::scan_with(raw, |_| {})
    }

    /// As `scan`, calling `on_short` with the range of every short string.
    fn scan_with(
        raw: &[u8],
        mut on_short: impl FnMut(Range<usize>),
    ) -> Result<PropertiesView, MalformedProperties> {
        let mut r = Reader::new(raw);
        let flags = r.u16().ok_or(MalformedProperties(TableError::Malformed))?;
        let mut more = flags & 1 != 0;
        while more {
            more = r.u16().ok_or(MalformedProperties(TableError::Malformed))? & 1 != 0;
        }
        let mut view = PropertiesView::default();
        let pos = |r: &Reader| raw.len() - r.remaining();
        let mut short = |r: &mut Reader| -> Result<Range<usize>, MalformedProperties> {
            let n = r.u8().ok_or(MalformedProperties(TableError::Malformed))? as usize;
            let start = raw.len() - r.remaining();
            r.take(n)
                .ok_or(MalformedProperties(TableError::Malformed))?;
            on_short(start..start + n);
            Ok(start..start + n)
        };
        for bit in [
            CONTENT_TYPE,
            CONTENT_ENCODING,
            HEADERS,
            DELIVERY_MODE,
            PRIORITY,
            CORRELATION_ID,
            REPLY_TO,
            EXPIRATION,
            MESSAGE_ID,
            TIMESTAMP,
            TYPE,
            USER_ID,
            APP_ID,
            CLUSTER_ID,
        ] {
            if flags & bit == 0 {
                continue;
            }
            match bit {
                HEADERS => {
                    // Every field is checked here, so that a table no client
                    // could read (or too deep to handle) never reaches a queue.
                    let start = pos(&r);
                    let n = field_table::check(&raw[start..]).map_err(MalformedProperties)?;
                    r.take(n)
                        .ok_or(MalformedProperties(TableError::Malformed))?;
                    view.headers = Some(start..start + n);
                }
                DELIVERY_MODE => {
                    view.delivery_mode = r.u8().ok_or(MalformedProperties(TableError::Malformed))?
                }
                PRIORITY => {
                    view.priority = Some(r.u8().ok_or(MalformedProperties(TableError::Malformed))?)
                }
                TIMESTAMP => {
                    r.u64().ok_or(MalformedProperties(TableError::Malformed))?;
                }
                REPLY_TO => view.reply_to = Some(short(&mut r)?),
                EXPIRATION => view.expiration = Some(short(&mut r)?),
                USER_ID => view.user_id = Some(short(&mut r)?),
                _ => {
                    short(&mut r)?;
                }
            }
        }
        Ok(view)
    }

    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == 2
    }

    pub fn str<'a>(raw: &'a [u8], range: &Option<Range<usize>>) -> Option<&'a [u8]> {
        range.as_ref().map(|r| &raw[r.clone()])
    }

    /// Parses the headers table, for headers-exchange routing. Keys that are
    /// not UTF-8 are read with each bad octet as `?`.
    pub fn headers(&self, raw: &[u8]) -> Option<FieldTable> {
        let range = self.headers.clone()?;
        let parse = |table: &[u8]| {
            amq_protocol::types::parsing::parse_field_table(table)
                .ok()
                .map(|(_, t)| t)
        };
        let table = &raw[range];
        let bad_keys = field_table::non_utf8_keys(table);
        if bad_keys.is_empty() {
            return parse(table);
        }
        let mut fixed = table.to_vec();
        for key in bad_keys {
            field_table::make_utf8(&mut fixed[key]);
        }
        parse(&fixed)
    }

    /// Parses properties that passed `scan` into amq-protocol's form. Short
    /// strings and header keys that are not UTF-8 (RabbitMQ passes them
    /// through; amq-protocol cannot read them) come out with each bad octet
    /// as `?`, rather than the message being lost.
    pub fn parse(raw: &[u8]) -> Option<AMQPProperties> {
        if let Ok((_, props)) = parse_properties(raw) {
            return Some(props);
        }
        let mut fixed = raw.to_vec();
        let mut strings = Vec::new();
        let view = Self::scan_with(raw, |range| strings.push(range)).ok()?;
        if let Some(headers) = view.headers {
            for key in field_table::non_utf8_keys(&raw[headers.clone()]) {
                strings.push(headers.start + key.start..headers.start + key.end);
            }
        }
        for range in strings {
            field_table::make_utf8(&mut fixed[range]);
        }
        parse_properties(&fixed[..]).ok().map(|(_, props)| props)
    }

    /// The same properties with reply_to replaced (direct reply-to).
    pub fn with_reply_to(&self, raw: &[u8], reply_to: &str) -> Bytes {
        let range = self.reply_to.clone().expect("reply_to is set");
        let mut out = BytesMut::with_capacity(raw.len() + reply_to.len());
        out.extend_from_slice(&raw[..range.start - 1]);
        out.put_u8(reply_to.len() as u8);
        out.extend_from_slice(reply_to.as_bytes());
        out.extend_from_slice(&raw[range.end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::gen_properties;
    use amq_protocol::types::{AMQPValue, ShortString};

    fn encode(props: &AMQPProperties) -> Vec<u8> {
        cookie_factory::gen_simple(gen_properties(props), Vec::new()).unwrap()
    }

    #[test]
    fn finds_the_properties_routing_needs() {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("k"), AMQPValue::LongInt(7));
        let props = AMQPProperties::default()
            .with_content_type("text/plain".into())
            .with_headers(headers.clone())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_expiration("1000".into())
            .with_timestamp(5)
            .with_user_id("guest".into())
            .with_app_id("app".into());
        let raw = encode(&props);
        let view = PropertiesView::scan(&raw).unwrap();
        assert!(view.is_persistent());
        assert_eq!(view.priority, Some(3));
        assert_eq!(
            PropertiesView::str(&raw, &view.reply_to),
            Some(&b"amq.rabbitmq.reply-to"[..])
        );
        assert_eq!(
            PropertiesView::str(&raw, &view.expiration),
            Some(&b"1000"[..])
        );
        assert_eq!(
            PropertiesView::str(&raw, &view.user_id),
            Some(&b"guest"[..])
        );
        assert_eq!(view.headers(&raw), Some(headers));

        let rewritten = view.with_reply_to(&raw, "amq.rabbitmq.reply-to.abc");
        let again = PropertiesView::scan(&rewritten).unwrap();
        assert_eq!(
            PropertiesView::str(&rewritten, &again.reply_to),
            Some(&b"amq.rabbitmq.reply-to.abc"[..])
        );
        assert_eq!(
            PropertiesView::str(&rewritten, &again.user_id),
            Some(&b"guest"[..])
        );
    }

    #[test]
    fn parse_reads_strings_and_keys_that_are_not_utf8() {
        // content-type "\xe9" and headers {"\xff": 1}
        let mut raw = vec![0b1010_0000, 0, 1, 0xe9];
        raw.extend_from_slice(&[0, 0, 0, 7, 1, 0xff, b'I', 0, 0, 0, 1]);
        assert!(PropertiesView::scan(&raw).is_ok());
        let props = PropertiesView::parse(&raw).expect("parsed");
        assert_eq!(props.content_type().as_ref().unwrap().as_str(), "?");
        let headers = props.headers().as_ref().unwrap();
        assert_eq!(headers.inner().get("?"), Some(&AMQPValue::LongInt(1)));
    }

    #[test]
    fn truncated_properties_are_malformed() {
        let raw = encode(&AMQPProperties::default().with_content_type("text/plain".into()));
        for cut in 0..raw.len() {
            assert!(PropertiesView::scan(&raw[..cut]).is_err(), "cut at {cut}");
        }
    }
}

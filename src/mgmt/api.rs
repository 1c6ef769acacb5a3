//! What every management handler shares: RabbitMQ's error bodies, request
//! bodies, the authenticated user, list pagination and `columns`, and
//! field tables as JSON.

use crate::broker::Broker;
use crate::error::{AmqpError, ReplyCode};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub(super) type ApiResult = Result<Response, ApiError>;

/// An error response: `{"error": …, "reason": …}` with RabbitMQ's status.
#[derive(Debug)]
pub(super) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    /// Usually a string; RabbitMQ answers some errors with a list.
    pub(crate) reason: Value,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        error: &'static str,
        reason: impl Into<Value>,
    ) -> ApiError {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }

    pub(super) fn bad_request(reason: impl Into<Value>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// The object in the path does not exist.
    pub(super) fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    /// 404 for an operation on something missing, e.g. `vhost_not_found`.
    pub(super) fn missing(reason: impl Into<Value>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    /// A user who may not do this (RabbitMQ spells it `not_authorised`
    /// here, unlike its bad-credentials answer).
    pub(super) fn not_authorised(reason: impl Into<Value>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    /// A name or key AMQP carries as a short string, over its 255 bytes:
    /// RabbitMQ's own words for a queue name (rabbit_parameter_validation).
    pub(super) fn too_long(what: &str, len: usize) -> ApiError {
        ApiError::bad_request(format!(
            "{what} should be less than 255 bytes, actually was {len}\n"
        ))
    }

    /// A body key RabbitMQ requires, in its Erlang-formatted reason.
    pub(super) fn key_missing(keys: &[&str]) -> ApiError {
        let list: Vec<String> = keys
            .iter()
            .map(|k| format!("{{key_missing,{k}}}"))
            .collect();
        ApiError::bad_request(format!("[{}]", list.join(",")))
    }

    /// As RabbitMQ's management plugin reports an AMQP error of the
    /// operation it performed: a refusal is 401 "Access refused.", anything
    /// else 400 with the error's detail (`inequivalent arg …`).
    pub(super) fn from_amqp(e: AmqpError) -> ApiError {
        match e.code {
            ReplyCode::AccessRefused => ApiError::not_authorised("Access refused."),
            _ => ApiError::bad_request(detail(&e)),
        }
    }
}

/// An AMQP error's text without its `CODE_NAME - ` prefix.
pub(super) fn detail(e: &AmqpError) -> String {
    let prefix = format!("{} - ", e.code.name());
    e.text.strip_prefix(&prefix).unwrap_or(&e.text).to_string()
}

impl From<AmqpError> for ApiError {
    fn from(e: AmqpError) -> ApiError {
        ApiError::from_amqp(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "reason": self.reason})),
        )
            .into_response()
    }
}

pub(super) fn created_or_updated(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

pub(super) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A JSON object request body; an empty body is `{}`. Anything that is
/// not a JSON object is RabbitMQ's 400 `not_json`.
pub(super) fn object(raw: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(raw) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

/// Parses a JSON request body into `T`: `not_json` as [`object`], a
/// missing field as RabbitMQ's `[{key_missing,K}]`, wrong types with
/// serde's reason. Fields `T` does not name are ignored, as RabbitMQ's
/// API ignores them (rabbitmqadmin sends several it does not use).
pub(super) fn body<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    from_object(object(raw)?)
}

/// RabbitMQ's `[{key_missing,K}…]` for every one of `keys` absent from
/// `fields`, all named at once.
pub(super) fn require_keys(fields: &Map<String, Value>, keys: &[&str]) -> Result<(), ApiError> {
    let missing: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !fields.contains_key(*k))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ApiError::key_missing(&missing))
    }
}

pub(super) fn from_object<T: DeserializeOwned>(map: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(map)).map_err(|e| {
        let text = e.to_string();
        match text
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(key) => ApiError::key_missing(&[key]),
            None => ApiError::bad_request(text),
        }
    })
}

/// `s` as an AMQP short string (a name, routing key or property), or
/// RabbitMQ's 400 naming `what`: a longer one cannot be sent to a client
/// nor kept in the store, which writes short strings as AMQP does.
pub(super) fn short_string(what: &str, s: &str) -> Result<ShortString, ApiError> {
    ShortString::try_new(s).map_err(|_| ApiError::too_long(what, s.len()))
}

/// `true`, `false`, or the strings "true"/"false" (rabbitmqadmin sends
/// those).
pub(super) fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    match B::deserialize(d)? {
        B::Bool(b) => Ok(b),
        B::Str(s) if s == "true" => Ok(true),
        B::Str(s) if s == "false" => Ok(false),
        B::Str(s) => Err(serde::de::Error::custom(format!(
            "expected true or false, got '{s}'"
        ))),
    }
}

/// An integer as RabbitMQ's `rabbit_misc:parse_int` reads one: a number
/// (a fraction truncated) or a string of digits ("1" from rabbitmqadmin);
/// anything else is its 400 `["not_integer", value]`.
pub(super) fn parse_int(v: &Value) -> Result<i64, ApiError> {
    let parsed = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| ApiError::bad_request(serde_json::json!(["not_integer", v])))
}

/// Tags as RabbitMQ accepts them: "a,b" or ["a", "b"].
pub(super) fn tags<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum T {
        List(Vec<String>),
        Str(String),
    }
    Ok(match T::deserialize(d)? {
        T::List(l) => l,
        T::Str(s) => s
            .split(',')
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
    })
}

/// The user a request authenticated as.
#[derive(Clone)]
pub(super) struct User {
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
}

impl User {
    pub(super) fn is_admin(&self) -> bool {
        self.tags.iter().any(|t| t == "administrator")
    }

    /// Administrators and monitoring users see every vhost's objects.
    pub(super) fn sees_everything(&self) -> bool {
        self.tags
            .iter()
            .any(|t| t == "administrator" || t == "monitoring")
    }

    pub(super) fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    /// Management users see only the vhosts they have permissions in.
    pub(super) fn may_see(&self, broker: &Broker, vhost: &str) -> bool {
        self.sees_everything() || broker.access.permission(vhost, &self.name).is_some()
    }

    /// The vhost, when it exists and the user may use it.
    pub(super) fn vhost(
        &self,
        broker: &Broker,
        name: &str,
    ) -> Result<std::sync::Arc<crate::broker::vhost::VHost>, ApiError> {
        let vhost = broker.vhost(name).ok_or_else(ApiError::not_found)?;
        if self.sees_everything() || broker.access.permission(name, &self.name).is_some() {
            Ok(vhost)
        } else {
            Err(ApiError::not_authorised(
                "User not authorised to access virtual host",
            ))
        }
    }

    /// For a PUT or POST into a vhost: RabbitMQ's 404 `vhost_not_found`.
    pub(super) fn vhost_for_change(
        &self,
        broker: &Broker,
        name: &str,
    ) -> Result<std::sync::Arc<crate::broker::vhost::VHost>, ApiError> {
        if broker.vhost(name).is_none() {
            return Err(ApiError::missing("vhost_not_found"));
        }
        self.vhost(broker, name)
    }
}

/// A list endpoint's answer: RabbitMQ's `name`/`use_regex` filter, `sort`
/// and `sort_reverse`, `page`/`page_size` (answered as a page object) and
/// `columns`.
pub(super) fn list(items: Vec<Value>, query: &HashMap<String, String>) -> ApiResult {
    list_lazily(items, |i| i["name"].as_str(), |i| i, query)
}

/// [`list`] of objects whose JSON costs to build (`json`): when a page is
/// asked for in an order that needs only names (none, or by name), only
/// that page's objects are built, so a page of 10,000 queues costs a page.
pub(super) fn list_lazily<T>(
    mut items: Vec<T>,
    name: impl Fn(&T) -> Option<&str>,
    json: impl Fn(T) -> Value,
    query: &HashMap<String, String>,
) -> ApiResult {
    let total = items.len();
    let sort = query.get("sort").filter(|s| !s.is_empty());
    let columns: Option<Vec<&str>> = query
        .get("columns")
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(str::trim).collect());
    let pick = |items: Vec<Value>| -> Vec<Value> {
        match &columns {
            Some(cols) => items.iter().map(|i| only_columns(i, cols)).collect(),
            None => items,
        }
    };
    let reverse = query.get("sort_reverse").is_some_and(|r| r == "true");
    let paged = query.get("page").is_some();
    if !paged || sort.is_some_and(|s| s != "name") {
        let mut items: Vec<Value> = items.into_iter().map(json).collect();
        if let Some(sort) = sort {
            items.sort_by(|a, b| compare(column(a, sort), column(b, sort)));
        }
        if reverse {
            items.reverse();
        }
        // As RabbitMQ: the name filter and paging apply only when a page is asked for.
        if !paged {
            return Ok(Json(Value::Array(pick(items))).into_response());
        }
        return page_of(items, |i| i["name"].as_str(), |i| i, query, total, pick);
    }
    if sort.is_some() {
        items.sort_by(|a, b| name(a).cmp(&name(b)));
    }
    if reverse {
        items.reverse();
    }
    page_of(items, name, json, query, total, pick)
}

/// The page `query` asks for of `items` (in their final order), its name
/// filter applied, as RabbitMQ's page object.
fn page_of<T>(
    mut items: Vec<T>,
    name: impl Fn(&T) -> Option<&str>,
    json: impl Fn(T) -> Value,
    query: &HashMap<String, String>,
    total: usize,
    pick: impl Fn(Vec<Value>) -> Vec<Value>,
) -> ApiResult {
    let number = |key: &str, default: i64| -> Result<i64, ApiError> {
        match query.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request("Pagination parameters are invalid")),
        }
    };
    let page = number("page", 1)?;
    let page_size = number("page_size", 100)?;
    if page < 1 || !(1..=500).contains(&page_size) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_pagination_parameters",
            format!("Invalid pagination parameters: page number {page}, page size {page_size}"),
        ));
    }
    if let Some(name_filter) = query.get("name").filter(|n| !n.is_empty()) {
        let pattern = if query.get("use_regex").is_some_and(|r| r == "true") {
            format!("(?i){name_filter}")
        } else {
            format!("(?i){}", regex::escape(name_filter))
        };
        let re = regex::Regex::new(&pattern)
            .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
        items.retain(|i| name(i).is_some_and(|n| re.is_match(n)));
    }
    let (page, page_size) = (page as usize, page_size as usize);
    let filtered = items.len();
    let page_count = filtered.div_ceil(page_size);
    if page > 1 && page > page_count {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_out_of_range",
            format!("Page out of range, page: {page} page size: {page_size}, len: {filtered}"),
        ));
    }
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .map(json)
        .collect();
    Ok(Json(json!({
        "filtered_count": filtered,
        "item_count": slice.len(),
        "items": pick(slice),
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
    .into_response())
}

fn column<'a>(item: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(item, |v, k| &v[k])
}

/// A total order over JSON values, as Erlang orders the terms RabbitMQ
/// sorts: numbers, then atoms (false, true, and `undefined` for a missing
/// value), maps, lists, and strings last. A column whose values differ in
/// type must still sort consistently: Rust's sort may panic otherwise.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::Bool(_) => 1,
            Value::Null => 2,
            Value::Object(_) => 3,
            Value::Array(_) => 4,
            Value::String(_) => 5,
        }
    }
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.total_cmp(&y)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Keeps only the given columns; `a.b` keeps `b` inside `a`. A path that
/// does not lead to a value (`name.x` where `name` is a string) keeps
/// nothing; a column already kept whole (`name,name.x`) stays whole.
fn only_columns(item: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    'columns: for path in columns {
        let keys: Vec<&str> = path.split('.').collect();
        let Some(value) = keys.iter().try_fold(item, |v, k| v.get(k)) else {
            continue;
        };
        let Some((last, parents)) = keys.split_last() else {
            continue;
        };
        let mut dst = &mut out;
        for k in parents {
            let entry = dst
                .entry(k.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry.as_object_mut() {
                Some(inner) => dst = inner,
                None => continue 'columns,
            }
        }
        dst.insert(last.to_string(), value.clone());
    }
    Value::Object(out)
}

/// Sorted by vhost then name, as RabbitMQ lists objects.
pub(super) fn by_vhost_and_name(mut items: Vec<Value>) -> Vec<Value> {
    items.sort_by(|a, b| {
        (a["vhost"].as_str(), a["name"].as_str()).cmp(&(b["vhost"].as_str(), b["name"].as_str()))
    });
    items
}

/// A field table as the management API shows it.
pub(super) fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.to_string(), field_json(v)))
            .collect(),
    )
}

pub(super) fn field_json(v: &AMQPValue) -> Value {
    use AMQPValue as V;
    match v {
        V::Boolean(b) => json!(b),
        V::ShortShortInt(n) => json!(n),
        V::ShortShortUInt(n) => json!(n),
        V::ShortInt(n) => json!(n),
        V::ShortUInt(n) => json!(n),
        V::LongInt(n) => json!(n),
        V::LongUInt(n) => json!(n),
        V::LongLongInt(n) => json!(n),
        V::Float(f) => json!(f),
        V::Double(f) => json!(f),
        V::Timestamp(t) => json!(t),
        V::ShortString(s) => json!(s.as_str()),
        V::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        V::FieldArray(a) => Value::Array(a.as_slice().iter().map(field_json).collect()),
        V::FieldTable(t) => table_json(t),
        V::ByteArray(b) => json!(b.as_slice()),
        V::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(i32::from(d.scale))),
        V::Void => Value::Null,
    }
}

/// How deep the API lets tables and arrays nest: exactly as deep as AMQP
/// lets a client, so an object made here is one a client could have
/// declared and the store reads back, and showing it as JSON never
/// recurses further.
const MAX_TABLE_DEPTH: usize = crate::protocol::field_table::MAX_DEPTH;

/// JSON arguments as the field table a client would have sent: strings are
/// long strings, integers 64-bit signed, as RabbitMQ converts them.
pub(super) fn json_table(v: &Value) -> Result<FieldTable, ApiError> {
    table_at(v, 1)
}

fn table_at(v: &Value, depth: usize) -> Result<FieldTable, ApiError> {
    let mut t = FieldTable::default();
    match v {
        Value::Null => {}
        Value::Object(map) => {
            for (k, v) in map {
                t.insert(short_string("field table key", k)?, json_field(v, depth)?);
            }
        }
        _ => return Err(ApiError::bad_request("arguments must be a JSON object")),
    }
    Ok(t)
}

/// A value inside a table or array that is `depth` deep.
fn json_field(v: &Value, depth: usize) -> Result<AMQPValue, ApiError> {
    if matches!(v, Value::Array(_) | Value::Object(_)) && depth == MAX_TABLE_DEPTH {
        return Err(ApiError::bad_request(format!(
            "field tables and arrays nested deeper than {MAX_TABLE_DEPTH} levels"
        )));
    }
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(a) => {
            let mut out = FieldArray::default();
            for x in a {
                out.push(json_field(x, depth + 1)?);
            }
            AMQPValue::FieldArray(out)
        }
        Value::Object(_) => AMQPValue::FieldTable(table_at(v, depth + 1)?),
    })
}

pub(super) fn node_name() -> String {
    if let Some(c) = crate::cluster::current() {
        return super::cluster::node_name_of(&c.me().node_name);
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("leveret@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn columns_keep_nested_paths() {
        let item = json!({"name": "q", "messages": 3, "message_stats": {"publish": 5, "ack": 1}});
        assert_eq!(
            only_columns(&item, &["name", "message_stats.publish", "missing"]),
            json!({"name": "q", "message_stats": {"publish": 5}})
        );
    }

    #[test]
    fn columns_through_plain_values_keep_what_they_can() {
        let item = json!({"name": "q", "arguments": {"x": 1}});
        assert_eq!(
            only_columns(&item, &["name", "name.x", "arguments.x.y"]),
            json!({"name": "q"})
        );
        assert_eq!(
            only_columns(&item, &["arguments.x", "arguments"]),
            json!({"arguments": {"x": 1}})
        );
    }

    #[test]
    fn mixed_types_sort_in_erlang_term_order() {
        let mut v = vec![
            json!("b"),
            json!(null),
            json!(2),
            json!(true),
            json!("a"),
            json!(1.5),
        ];
        v.sort_by(compare);
        assert_eq!(
            v,
            vec![
                json!(1.5),
                json!(2),
                json!(true),
                json!(null),
                json!("a"),
                json!("b")
            ]
        );
    }

    #[tokio::test]
    async fn pages_and_filters() {
        let items: Vec<Value> = (0..5).map(|i| json!({"name": format!("q{i}")})).collect();
        let r = list(items.clone(), &q(&[("page", "2"), ("page_size", "2")])).unwrap();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["items"], json!([{"name": "q2"}, {"name": "q3"}]));
        assert_eq!(
            (v["page_count"].as_u64(), v["total_count"].as_u64()),
            (Some(3), Some(5))
        );
        assert!(list(items.clone(), &q(&[("page", "4"), ("page_size", "2")])).is_err());
        assert!(list(items, &q(&[("page", "x")])).is_err());
    }
}

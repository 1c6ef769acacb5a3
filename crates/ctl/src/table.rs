//! Human-readable output: aligned tables of JSON objects and `key: value`
//! lists. A field an object lacks prints as an empty cell.

use serde_json::Value;

/// One column: its heading and where its value is in each object
/// (dot-separated for nested fields, e.g. `queue.name`).
pub(crate) type Column = (&'static str, &'static str);

/// The value at a dot-separated `path` in `v`, if there is one.
pub(crate) fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// How a JSON value reads in a cell: strings as they are, lists of plain
/// values joined with commas, empty objects and nulls as nothing, other
/// objects as compact JSON.
pub(crate) fn cell(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(items)) if items.iter().all(is_plain) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(map)) if map.is_empty() => String::new(),
        Some(other) => other.to_string(),
    };
    printable(&text)
}

fn is_plain(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// Control characters (a payload's newlines, say) would break the table's
/// lines; show them escaped.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// An aligned table of `rows` (JSON objects), one line per object in the
/// given order, with a heading line. Columns whose every cell is a number are right-aligned.
pub(crate) fn render(rows: &[Value], columns: &[Column]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|(_, path)| cell(lookup(row, path)))
                .collect()
        })
        .collect();
    let numeric: Vec<bool> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .all(|row| matches!(lookup(row, columns[i].1), Some(Value::Number(_)) | None))
                && !rows.is_empty()
        })
        .collect();
    let headings: Vec<String> = columns.iter().map(|(h, _)| h.to_string()).collect();
    render_cells(&headings, &cells, &numeric)
}

fn width(s: &str) -> usize {
    s.chars().count()
}

fn render_cells(headings: &[String], cells: &[Vec<String>], numeric: &[bool]) -> String {
    let mut widths: Vec<usize> = headings.iter().map(|h| width(h)).collect();
    for row in cells {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(width(c));
        }
    }
    let mut out = String::new();
    for row in std::iter::once(headings).chain(cells.iter().map(|r| r.as_slice())) {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - width(c));
            if numeric[i] {
                line.push_str(&pad);
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `key: value` lines with the values aligned; pairs whose value is `None`
/// are left out.
pub(crate) fn render_pairs(pairs: &[(&str, Option<String>)]) -> String {
    let present: Vec<(&str, &String)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
        .collect();
    let w = present.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in present {
        let line = format!("{k}:{}  {}", " ".repeat(w - width(k)), printable(v));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aligns_columns_and_leaves_missing_fields_blank() {
        let rows = vec![
            json!({"name": "a", "consumers": 10}),
            json!({"name": "orders", "messages": 12, "consumers": 1}),
        ];
        let out = render(
            &rows,
            &[
                ("name", "name"),
                ("messages", "messages"),
                ("consumers", "consumers"),
            ],
        );
        assert_eq!(
            out,
            "name    messages  consumers\n\
             a                        10\n\
             orders        12          1\n"
        );
    }

    #[test]
    fn formats_cells() {
        assert_eq!(
            cell(Some(&json!(["administrator", "x"]))),
            "administrator,x"
        );
        assert_eq!(cell(Some(&json!({}))), "");
        assert_eq!(
            cell(Some(&json!({"x-max-length": 1}))),
            r#"{"x-max-length":1}"#
        );
        assert_eq!(cell(Some(&json!("a\nb"))), "a\\nb");
        assert_eq!(cell(Some(&json!(true))), "true");
        assert_eq!(cell(None), "");
        let v = json!({"queue": {"name": "q"}});
        assert_eq!(cell(lookup(&v, "queue.name")), "q");
        assert_eq!(cell(lookup(&v, "queue.vhost")), "");
    }

    #[test]
    fn empty_table_is_its_heading() {
        assert_eq!(render(&[], &[("name", "name"), ("n", "n")]), "name  n\n");
    }

    #[test]
    fn pairs_skip_missing_values() {
        let out = render_pairs(&[
            ("node", Some("rabbit@vm".into())),
            ("x", None),
            ("queues", Some("3".into())),
        ]);
        assert_eq!(out, "node:    rabbit@vm\nqueues:  3\n");
    }
}

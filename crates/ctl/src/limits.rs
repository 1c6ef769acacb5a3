//! rabbitmqctl's limit and topic permission commands, with its positional
//! arguments: `set_vhost_limits [-p vhost] DEFINITION`,
//! `clear_vhost_limits`, `list_vhost_limits [--global]`,
//! `set_user_limits USER DEFINITION`, `clear_user_limits USER NAME|all`,
//! `list_user_limits [USER]`, `set_topic_permissions [-p vhost] USER
//! EXCHANGE WRITE READ`, `clear_topic_permissions [-p vhost] USER
//! [EXCHANGE]`, `list_topic_permissions [-p vhost]`. Each is one or a few
//! requests to the management API's `/vhost-limits`, `/user-limits` and
//! `/topic-permissions`.

use crate::client::{enc, Method};
use crate::table::Column;
use crate::{CtlError, Ctx, Outcome};
use serde_json::{json, Map, Value};

pub(crate) const SET_VHOST_LIMITS_HELP: &str = "\
set_vhost_limits [-p VHOST] DEFINITION
DEFINITION is a JSON object that replaces the vhost's limits, e.g.
'{\"max-connections\": 100, \"max-queues\": 10}' (-1: no limit, 0: none allowed).";
pub(crate) const SET_USER_LIMITS_HELP: &str = "\
set_user_limits USER DEFINITION
DEFINITION is a JSON object added to the user's limits, e.g.
'{\"max-connections\": 10, \"max-channels\": 100}' (-1: no limit, 0: none allowed).";
pub(crate) const CLEAR_USER_LIMITS_HELP: &str = "\
clear_user_limits USER max-connections|max-channels|all";
pub(crate) const SET_TOPIC_PERMISSIONS_HELP: &str = "\
set_topic_permissions [-p VHOST] USER EXCHANGE WRITE READ
WRITE and READ are regular expressions a routing key (publish) and a
binding key (bind) on the topic exchange must match; {username} and
{vhost} stand for the user's name and the vhost.";
pub(crate) const CLEAR_TOPIC_PERMISSIONS_HELP: &str = "\
clear_topic_permissions [-p VHOST] USER [EXCHANGE]   (all exchanges without one)";

const VHOST_LIMIT_COLUMNS: &[Column] = &[("vhost", "vhost"), ("limits", "value")];
const USER_LIMIT_COLUMNS: &[Column] = &[("user", "user"), ("limits", "value")];
const TOPIC_PERMISSION_COLUMNS: &[Column] = &[
    ("user", "user"),
    ("exchange", "exchange"),
    ("write", "write"),
    ("read", "read"),
];

/// Exactly `n` positional arguments, or a usage error naming them.
fn positional<'a>(cmd: &str, args: &'a [String], names: &[&str]) -> Result<Vec<&'a str>, CtlError> {
    if args.len() != names.len() {
        return Err(CtlError::usage(format!(
            "{cmd} takes {}, got {} argument(s)",
            names.join(" "),
            args.len()
        )));
    }
    Ok(args.iter().map(String::as_str).collect())
}

/// A JSON object given on the command line.
fn definition(cmd: &str, text: &str) -> Result<Map<String, Value>, CtlError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(CtlError::usage(format!(
            "{cmd}: the definition must be a JSON object, e.g. '{{\"max-connections\": 10}}', got '{text}'"
        ))),
    }
}

/// The names a limits list (`[{…, "value": {name: n}}]`) sets.
fn names_in(list: &Value) -> Vec<String> {
    list.as_array()
        .and_then(|a| a.first())
        .and_then(|entry| entry["value"].as_object())
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

impl Ctx<'_> {
    pub(crate) fn set_vhost_limits(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let [text] = positional("set_vhost_limits", args, &["DEFINITION"])?[..] else {
            unreachable!("one argument")
        };
        let wanted = definition("set_vhost_limits", text)?;
        let v = self.v();
        let what = format!("vhost '{}'", self.vhost);
        let current = self.client.get(&format!("/vhost-limits/{v}"), &what)?;
        for (name, value) in &wanted {
            let path = format!("/vhost-limits/{v}/{}", enc(name));
            let body = json!({ "value": value });
            self.client.call(Method::Put, &path, Some(&body), &what)?;
        }
        for name in names_in(&current) {
            if !wanted.contains_key(&name) {
                let path = format!("/vhost-limits/{v}/{}", enc(&name));
                self.client.call(Method::Delete, &path, None, &what)?;
            }
        }
        self.done("vhost limits set")
    }

    pub(crate) fn clear_vhost_limits(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        positional("clear_vhost_limits", args, &[])?;
        let v = self.v();
        let what = format!("vhost '{}'", self.vhost);
        let current = self.client.get(&format!("/vhost-limits/{v}"), &what)?;
        for name in names_in(&current) {
            let path = format!("/vhost-limits/{v}/{}", enc(&name));
            self.client.call(Method::Delete, &path, None, &what)?;
        }
        self.done("vhost limits cleared")
    }

    pub(crate) fn list_vhost_limits(&mut self, global: bool) -> Result<Outcome, CtlError> {
        let rows = if global {
            self.client.get("/vhost-limits", "vhost limits")?
        } else {
            let what = format!("vhost '{}'", self.vhost);
            self.client
                .get(&format!("/vhost-limits/{}", self.v()), &what)?
        };
        self.print_rows(rows, VHOST_LIMIT_COLUMNS, true)?;
        Ok(Outcome::Ok)
    }

    pub(crate) fn set_user_limits(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let [user, text] = positional("set_user_limits", args, &["USER", "DEFINITION"])?[..] else {
            unreachable!("two arguments")
        };
        let wanted = definition("set_user_limits", text)?;
        let what = format!("user '{user}'");
        for (name, value) in &wanted {
            let path = format!("/user-limits/{}/{}", enc(user), enc(name));
            let body = json!({ "value": value });
            self.client.call(Method::Put, &path, Some(&body), &what)?;
        }
        self.done("user limits set")
    }

    pub(crate) fn clear_user_limits(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let [user, name] = positional("clear_user_limits", args, &["USER", "NAME|all"])?[..] else {
            unreachable!("two arguments")
        };
        let what = format!("user '{user}'");
        let names = if name == "all" {
            let current = self
                .client
                .get(&format!("/user-limits/{}", enc(user)), &what)?;
            names_in(&current)
        } else {
            vec![name.to_string()]
        };
        for name in names {
            let path = format!("/user-limits/{}/{}", enc(user), enc(&name));
            self.client.call(Method::Delete, &path, None, &what)?;
        }
        self.done("user limits cleared")
    }

    pub(crate) fn list_user_limits(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let rows = match args {
            [] => self.client.get("/user-limits", "user limits")?,
            [user] => self.client.get(
                &format!("/user-limits/{}", enc(user)),
                &format!("user '{user}'"),
            )?,
            _ => {
                return Err(CtlError::usage(
                    "list_user_limits takes at most one argument, USER",
                ))
            }
        };
        self.print_rows(rows, USER_LIMIT_COLUMNS, true)?;
        Ok(Outcome::Ok)
    }

    pub(crate) fn set_topic_permissions(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let names = ["USER", "EXCHANGE", "WRITE", "READ"];
        let [user, exchange, write, read] = positional("set_topic_permissions", args, &names)?[..]
        else {
            unreachable!("four arguments")
        };
        let path = format!("/topic-permissions/{}/{}", self.v(), enc(user));
        let body = json!({"exchange": exchange, "write": write, "read": read});
        let what = format!("user '{user}' or vhost '{}'", self.vhost);
        self.client.call(Method::Put, &path, Some(&body), &what)?;
        self.done("topic permissions set")
    }

    pub(crate) fn clear_topic_permissions(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let mut path = match args {
            [user] | [user, _] => format!("/topic-permissions/{}/{}", self.v(), enc(user)),
            _ => {
                return Err(CtlError::usage(
                    "clear_topic_permissions takes USER [EXCHANGE]",
                ))
            }
        };
        if let [_, exchange] = args {
            path.push('/');
            path.push_str(&enc(exchange));
        }
        let what = format!(
            "topic permissions of user '{}' in vhost '{}'",
            args[0], self.vhost
        );
        self.client.call(Method::Delete, &path, None, &what)?;
        self.done("topic permissions cleared")
    }

    pub(crate) fn list_topic_permissions(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        positional("list_topic_permissions", args, &[])?;
        let what = format!("vhost '{}'", self.vhost);
        let rows = self
            .client
            .get(&format!("/vhosts/{}/topic-permissions", self.v()), &what)?;
        self.print_rows(rows, TOPIC_PERMISSION_COLUMNS, true)?;
        Ok(Outcome::Ok)
    }
}

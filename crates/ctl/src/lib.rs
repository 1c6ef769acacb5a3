//! `leveret ctl`: a rabbitmqadmin-style command-line client for the RabbitMQ
//! management HTTP API. It uses only the documented API, so it manages
//! Leveret and RabbitMQ alike.
//!
//! Commands take rabbitmqadmin's `key=value` arguments
//! (`declare queue name=orders durable=true`); object types come first
//! (`list queues`, `delete binding …`). Output is an aligned table, or the
//! API's JSON with `--format json`. Every failure is one line on stderr and
//! a non-zero exit: 2 for a bad command line, 1 for anything else.

#![warn(unreachable_pub)]

mod client;
mod cluster;
mod limits;
mod table;

use clap::{Args, Subcommand, ValueEnum};
use client::{enc, Client, Method};
use serde_json::{json, Map, Value};
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use table::Column;

/// Output format of `leveret ctl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    // Aligned columns for people.
    Table,
    // The API's JSON, pretty-printed.
    Json,
}

const HELP: &str = "\
{about-with-newline}
Usage: leveret ctl [OPTIONS] <COMMAND> [KEY=VALUE]...

Commands:
  list WHAT                        List queues|exchanges|bindings|consumers|permissions|
                                   policies|operator_policies in --vhost, or
                                   connections|channels|vhosts|users
  declare queue name=Q             Declare a queue [durable auto_delete queue_type arguments]
  declare exchange name=X type=T   Declare an exchange [durable auto_delete internal arguments]
  declare binding source=X destination=Q
                                   Bind a queue or exchange [destination_type routing_key arguments]
  delete queue name=Q              Delete a queue [if_empty if_unused]
  delete exchange name=X           Delete an exchange [if_unused]
  delete binding source=X destination=Q routing_key=K
                                   Remove a binding (or properties_key=P) [destination_type arguments]
  purge queue name=Q               Remove all ready messages from a queue
  publish routing_key=K [exchange=X] [payload=TEXT]
                                   Publish one message; payload from stdin when not given
                                   [payload_encoding properties]
  get queue=Q                      Fetch messages [count ackmode encoding truncate]
  close connection name=NAME       Close a client connection [reason]
  add_user name=U password=P       Add (or replace) a user [tags=administrator,...]
  delete_user name=U               Delete a user
  change_password name=U password=P
                                   Change a user's password, keeping the tags
  set_user_tags name=U tags=A,B    Set a user's tags, keeping the password
  add_vhost name=V                 Add a virtual host [description tags tracing]
  delete_vhost name=V              Delete a virtual host and everything in it
  set_permissions user=U configure=RE write=RE read=RE
                                   Set a user's permissions in --vhost [vhost=V]
  clear_permissions user=U         Remove a user's permissions in --vhost [vhost=V]
  set_policy NAME PATTERN DEFINITION
                                   Set a policy in --vhost (-p) [--priority N] [--apply-to
                                   queues|exchanges|all]; DEFINITION is JSON
  clear_policy NAME                Remove a policy from --vhost
  list_policies                    List the policies of --vhost
  set_operator_policy NAME PATTERN DEFINITION, clear_operator_policy NAME,
  list_operator_policies           The same for operator policies (administrators)
  set_vhost_limits DEFINITION      Set --vhost's limits, e.g. '{\"max-connections\": 10}'
  clear_vhost_limits               Remove --vhost's limits
  list_vhost_limits [--global]     List --vhost's limits (every vhost's with --global)
  set_user_limits USER DEFINITION  Set a user's limits, e.g. '{\"max-channels\": 10}'
  clear_user_limits USER NAME|all  Remove a user's limit, or all of them
  list_user_limits [USER]          List user limits
  set_topic_permissions USER EXCHANGE WRITE READ
                                   Set a user's topic permissions in --vhost
  clear_topic_permissions USER [EXCHANGE]
                                   Remove a user's topic permissions in --vhost
  list_topic_permissions           List topic permissions in --vhost
  export FILE                      Save all definitions as JSON (- for stdout)
  import FILE                      Load definitions from JSON (- for stdin)
  list_stream_connections          Stream protocol connections
  list_stream_consumers            Stream protocol consumers of --vhost: offset, lag, credits
  list_stream_publishers           Stream protocol publishers of --vhost: published, confirmed
  status                           Version, node, object and message totals, message rates
  health                           Alarm check: prints ok, or the alarms and exits 1
  cluster status                   Cluster mode: nodes, roles, ISR, leader, lease, lag
  check_if_node_is_quorum_critical Exit 1 if stopping this node leaves too few in sync
  forget_cluster_node NODE         Cluster mode: remove a node stopped for good (on the leader)
  reload_certificates              Reload the broker's TLS certificate, key and CA files
  help COMMAND                     Every argument of one command

  Flags take true/false, arguments= and properties= take JSON objects, e.g.
  arguments='{\"x-max-length\":10}'. Also: declare user|vhost|permission,
  delete user|vhost|permission|connection, export definitions FILE.

Options:
{options}";

const LIST_HELP: &str = "\
list queues|exchanges|bindings|consumers|permissions|policies|operator_policies
                                                       (in --vhost)
list connections|channels|vhosts|users                 (on the broker)";
const DECLARE_HELP: &str = "\
declare queue name=Q [durable=true] [auto_delete=false]
        [queue_type=classic|quorum|stream] [arguments=JSON]
declare exchange name=X type=direct|fanout|topic|headers [durable=true]
        [auto_delete=false] [internal=false] [arguments=JSON]
declare binding source=X destination=Q [destination_type=queue|exchange]
        [routing_key=K] [arguments=JSON]
declare user name=U password=P [tags=A,B]                (same as add_user)
declare vhost name=V [description=TEXT]                  (same as add_vhost)
declare permission user=U [vhost=V] configure=RE write=RE read=RE";
const DELETE_HELP: &str = "\
delete queue name=Q [if_empty=true] [if_unused=true]
delete exchange name=X [if_unused=true]
delete binding source=X destination=Q [destination_type=queue|exchange]
        properties_key=P | routing_key=K [arguments=JSON]
        (with routing_key=, the binding's properties_key is looked up)
delete user name=U
delete vhost name=V
delete permission user=U [vhost=V]
delete connection name=NAME [reason=TEXT]                (same as close)";
const PURGE_HELP: &str = "\
purge queue name=Q";
const PUBLISH_HELP: &str = "\
publish routing_key=K [exchange=X] [payload=TEXT]
        [payload_encoding=string|base64] [properties=JSON]
Without payload=, the payload is read from standard input. exchange=
defaults to the default exchange. properties= is e.g.
'{\"content_type\":\"text/plain\",\"delivery_mode\":2,\"headers\":{\"k\":\"v\"}}'.";
const GET_HELP: &str = "\
get queue=Q [count=1]
    [ackmode=ack_requeue_true|ack_requeue_false|reject_requeue_true|reject_requeue_false]
    [encoding=auto|base64] [truncate=50000]";
const CLOSE_HELP: &str = "\
close connection name=NAME [reason=TEXT]
NAME is as `list connections` shows it, e.g. \"127.0.0.1:50000 -> 127.0.0.1:5672\".";
const ADD_USER_HELP: &str = "\
add_user name=U password=P [tags=administrator,management,...]";
const DELETE_USER_HELP: &str = "\
delete_user name=U";
const CHANGE_PASSWORD_HELP: &str = "\
change_password name=U password=P";
const SET_USER_TAGS_HELP: &str = "\
set_user_tags name=U tags=A,B   (tags= with nothing clears them)";
const ADD_VHOST_HELP: &str = "\
add_vhost name=V [description=TEXT] [tags=A,B] [tracing=false]";
const DELETE_VHOST_HELP: &str = "\
delete_vhost name=V";
const SET_PERMISSIONS_HELP: &str = "\
set_permissions user=U [vhost=V] configure=RE write=RE read=RE
vhost= defaults to --vhost; the patterns are regular expressions
(\".*\" for everything, \"\" for nothing).";
const CLEAR_PERMISSIONS_HELP: &str = "\
clear_permissions user=U [vhost=V]";
const SET_POLICY_HELP: &str = "\
set_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] NAME PATTERN DEFINITION
PATTERN is a regular expression over queue or exchange names; DEFINITION a
JSON object, e.g. '{\"max-length\":1000,\"dead-letter-exchange\":\"dlx\"}'.
Of the policies matching an object the one with the highest priority applies.";
const SET_OPERATOR_POLICY_HELP: &str = "\
set_operator_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] NAME PATTERN DEFINITION
An operator policy caps limits (max-length, max-length-bytes, message-ttl,
expires, delivery-limit): the smaller of it, the policy and the queue's
argument applies.";
const EXPORT_HELP: &str = "\
export FILE   (or: export definitions FILE; FILE - is standard output)";
const IMPORT_HELP: &str = "\
import FILE   (or: import definitions FILE; FILE - is standard input)

Definitions Leveret cannot apply (shovels, federation, exchange types it
lacks...) fail the import, listed, and nothing is applied; with
--skip-unsupported the rest is applied and what was left out is listed.";

/// Manage a running broker through the RabbitMQ management HTTP API
/// (rabbitmqadmin-style).
#[derive(Args, Debug)]
#[command(help_template = HELP, arg_required_else_help = true)]
pub struct CtlArgs {
    /// Management API base URL
    #[arg(
        long,
        global = true,
        env = "LEVERET_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub url: String,
    /// User name
    #[arg(long, global = true, env = "LEVERET_USER", default_value = "guest")]
    pub user: String,
    /// Password
    #[arg(
        long,
        global = true,
        env = "LEVERET_PASSWORD",
        default_value = "guest",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub password: String,
    /// Virtual host the per-vhost commands work in
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "LEVERET_VHOST",
        default_value = "/"
    )]
    pub vhost: String,
    /// For https: trust the server certificates this CA file (PEM) signed,
    /// instead of the public CAs
    #[arg(long, global = true, env = "LEVERET_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// For https: present this client certificate (PEM, with --key)
    #[arg(
        long,
        global = true,
        env = "LEVERET_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<std::path::PathBuf>,
    /// For https: the client certificate's private key (PEM)
    #[arg(
        long,
        global = true,
        env = "LEVERET_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<std::path::PathBuf>,
    /// For https: do not verify the server's certificate (testing only)
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Output format
    #[arg(
        long,
        global = true,
        env = "LEVERET_FORMAT",
        value_enum,
        default_value_t = Format::Table
    )]
    pub format: Format,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands of `leveret ctl`. Arguments are `key=value` words, checked
/// by each command (so that a mistake reads as one line).
#[derive(Subcommand, Debug)]
#[command(rename_all = "snake_case")]
pub enum CtlCommand {
    /// List objects as a table (or JSON with --format json)
    #[command(after_help = LIST_HELP)]
    List {
        /// What to list
        what: Option<String>,
        #[arg(hide = true)]
        args: Vec<String>,
    },
    /// Declare a queue, exchange, binding, user, vhost or permission
    #[command(after_help = DECLARE_HELP)]
    Declare {
        /// queue, exchange, binding, user, vhost or permission
        what: Option<String>,
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Delete a queue, exchange, binding, user, vhost or permission
    #[command(after_help = DELETE_HELP)]
    Delete {
        /// queue, exchange, binding, user, vhost, permission or connection
        what: Option<String>,
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Remove all ready messages from a queue
    #[command(after_help = PURGE_HELP)]
    Purge {
        /// queue
        what: Option<String>,
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Publish one message and say whether it was routed
    #[command(after_help = PUBLISH_HELP)]
    Publish {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Fetch messages from a queue (requeued by default)
    #[command(after_help = GET_HELP)]
    Get {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Close a client connection
    #[command(after_help = CLOSE_HELP)]
    Close {
        /// connection
        what: Option<String>,
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Add a user, or replace one's password and tags
    #[command(after_help = ADD_USER_HELP)]
    AddUser {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Delete a user
    #[command(after_help = DELETE_USER_HELP)]
    DeleteUser {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Change a user's password, keeping its tags
    #[command(after_help = CHANGE_PASSWORD_HELP)]
    ChangePassword {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Set a user's tags, keeping its password
    #[command(after_help = SET_USER_TAGS_HELP)]
    SetUserTags {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Add a virtual host
    #[command(after_help = ADD_VHOST_HELP)]
    AddVhost {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Delete a virtual host and everything in it
    #[command(after_help = DELETE_VHOST_HELP)]
    DeleteVhost {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Set a user's permissions in a virtual host
    #[command(after_help = SET_PERMISSIONS_HELP)]
    SetPermissions {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Remove a user's permissions in a virtual host
    #[command(after_help = CLEAR_PERMISSIONS_HELP)]
    ClearPermissions {
        /// key=value arguments
        #[arg(value_name = "KEY=VALUE")]
        args: Vec<String>,
    },
    /// Set (or replace) a policy in the virtual host (rabbitmqctl set_policy)
    #[command(after_help = SET_POLICY_HELP)]
    SetPolicy(PolicyArgs),
    /// Remove a policy from the virtual host
    ClearPolicy {
        /// The policy's name
        name: String,
    },
    /// List the virtual host's policies
    ListPolicies,
    /// Set (or replace) an operator policy in the virtual host
    #[command(after_help = SET_OPERATOR_POLICY_HELP)]
    SetOperatorPolicy(PolicyArgs),
    /// Remove an operator policy from the virtual host
    ClearOperatorPolicy {
        /// The operator policy's name
        name: String,
    },
    /// List the virtual host's operator policies
    ListOperatorPolicies,
    /// Set a virtual host's limits (replacing them)
    #[command(after_help = limits::SET_VHOST_LIMITS_HELP)]
    SetVhostLimits {
        /// DEFINITION (a JSON object)
        #[arg(value_name = "DEFINITION", allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove a virtual host's limits
    ClearVhostLimits {
        #[arg(hide = true)]
        args: Vec<String>,
    },
    /// List a virtual host's limits
    ListVhostLimits {
        /// Every virtual host's limits
        #[arg(long)]
        global: bool,
    },
    /// Set a user's limits (adding to them)
    #[command(after_help = limits::SET_USER_LIMITS_HELP)]
    SetUserLimits {
        /// USER DEFINITION
        #[arg(value_name = "ARG", allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove a user's limit, or all of them
    #[command(after_help = limits::CLEAR_USER_LIMITS_HELP)]
    ClearUserLimits {
        /// USER NAME|all
        #[arg(value_name = "ARG")]
        args: Vec<String>,
    },
    /// List user limits (every user's, or one's)
    ListUserLimits {
        /// USER
        #[arg(value_name = "USER")]
        args: Vec<String>,
    },
    /// Set a user's topic permissions for an exchange in a virtual host
    #[command(after_help = limits::SET_TOPIC_PERMISSIONS_HELP)]
    SetTopicPermissions {
        /// USER EXCHANGE WRITE READ
        #[arg(value_name = "ARG", allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Remove a user's topic permissions in a virtual host
    #[command(after_help = limits::CLEAR_TOPIC_PERMISSIONS_HELP)]
    ClearTopicPermissions {
        /// USER [EXCHANGE]
        #[arg(value_name = "ARG")]
        args: Vec<String>,
    },
    /// List the topic permissions in a virtual host
    ListTopicPermissions {
        #[arg(hide = true)]
        args: Vec<String>,
    },
    /// Save the broker's definitions (users, vhosts, permissions, queues,
    /// exchanges, bindings, policies) as JSON
    #[command(after_help = EXPORT_HELP)]
    Export {
        /// FILE, or "definitions FILE"
        #[arg(value_name = "FILE")]
        args: Vec<String>,
    },
    /// Load definitions from a JSON file made by export
    #[command(after_help = IMPORT_HELP)]
    Import {
        /// FILE, or "definitions FILE"
        #[arg(value_name = "FILE")]
        args: Vec<String>,
        /// Apply what can be applied and list what was left out
        #[arg(long = "skip-unsupported")]
        skip_unsupported: bool,
    },
    /// Make a super stream: a direct exchange and its partition streams
    /// (rabbitmq-streams add_super_stream)
    AddSuperStream(SuperStreamArgs),
    /// Remove a super stream: its exchange and partition streams
    DeleteSuperStream {
        /// The super stream's name
        name: String,
    },
    /// Where a stream stands: offsets, segments, bytes, each reader's lag
    /// and the stored offsets (rabbitmq-streams stream_status)
    StreamStatus {
        /// The stream's name
        name: String,
    },
    /// List stream protocol connections (rabbitmq-streams
    /// list_stream_connections)
    ListStreamConnections,
    /// List the stream protocol consumers of a virtual host, with their
    /// offset and lag (rabbitmq-streams list_stream_consumers)
    ListStreamConsumers,
    /// List the stream protocol publishers of a virtual host, with their
    /// counts (rabbitmq-streams list_stream_publishers)
    ListStreamPublishers,
    /// Show the broker's version, node, object and message totals, rates
    Status,
    /// Check for resource alarms; exit 1 unless there are none
    Health,
    /// `cluster status`: every node of the cluster, its role, whether it
    /// is in sync, its lease and replication lag
    Cluster {
        /// status
        what: Option<String>,
    },
    /// Exit 1 if stopping this node would leave fewer in-sync nodes than
    /// a confirm needs (rabbitmq-diagnostics check_if_node_is_quorum_critical)
    CheckIfNodeIsQuorumCritical,
    /// Remove a node stopped for good from the cluster's list of nodes
    /// (rabbitmqctl forget_cluster_node); refused while it runs
    ForgetClusterNode {
        /// The node: `leveret@n3`, or just `n3`
        node: String,
    },
    /// Reload the broker's TLS certificate, key and CA files (as SIGHUP)
    ReloadCertificates,
}

/// The arguments of add_super_stream, as rabbitmq-streams'.
#[derive(Args, Debug)]
pub struct SuperStreamArgs {
    /// The super stream's name
    name: String,
    /// How many partitions (NAME-0, NAME-1, …)
    #[arg(long, conflicts_with = "binding_keys")]
    partitions: Option<u32>,
    /// Comma-separated binding keys, one partition each (NAME-KEY)
    #[arg(long = "binding-keys")]
    binding_keys: Option<String>,
    /// Retention by age of each partition, e.g. 7D
    #[arg(long = "max-age")]
    max_age: Option<String>,
    /// Retention by size of each partition, in bytes
    #[arg(long = "max-length-bytes")]
    max_length_bytes: Option<u64>,
    /// Segment size of each partition, in bytes
    #[arg(long = "stream-max-segment-size-bytes")]
    max_segment_size_bytes: Option<u64>,
}

/// The arguments of set_policy and set_operator_policy, as rabbitmqctl's.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// The policy's name
    name: String,
    /// A regular expression over queue or exchange names
    #[arg(allow_hyphen_values = true)]
    pattern: String,
    /// The definition, a JSON object
    #[arg(allow_hyphen_values = true)]
    definition: String,
    /// Higher wins when several policies match
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i64,
    /// What the policy applies to
    #[arg(long, value_parser = ["queues", "exchanges", "all"], default_value = "all")]
    apply_to: String,
}

/// A failure, told as one line.
#[derive(Debug)]
pub struct CtlError {
    pub message: String,
    /// A mistake on the command line (exit code 2) rather than a failed
    /// request (exit code 1).
    pub usage: bool,
}

impl CtlError {
    fn usage(message: impl Into<String>) -> CtlError {
        CtlError {
            message: message.into(),
            usage: true,
        }
    }
    fn failed(message: impl Into<String>) -> CtlError {
        CtlError {
            message: message.into(),
            usage: false,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

/// What a command ended with, when it did not fail.
enum Outcome {
    Ok,
    /// `health` found a problem: the report is printed, the exit is 1.
    Unhealthy,
}

/// Runs one `leveret ctl` command: output on stdout, a failure as one line
/// on stderr.
pub fn run(args: CtlArgs) -> ExitCode {
    let mut out = String::new();
    let tls = client::Tls {
        cacert: args.cacert.as_deref(),
        cert: args.cert.as_deref(),
        key: args.key.as_deref(),
        insecure: args.insecure,
    };
    let result = Client::new(&args.url, &args.user, &args.password, &tls).and_then(|client| {
        let mut ctx = Ctx {
            client,
            vhost: args.vhost.clone(),
            format: args.format,
            out: &mut out,
        };
        ctx.dispatch(&args.command)
    });
    // A closed pipe (`leveret ctl list queues | head -1`) is not an error
    // worth reporting.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    let _ = std::io::stdout().flush();
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Unhealthy) => ExitCode::from(1),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "leveret ctl: {}", e.message);
            ExitCode::from(if e.usage { 2 } else { 1 })
        }
    }
}

/// `key=value` arguments of one command.
#[derive(Debug)]
struct Params {
    /// The command, for messages: "declare queue".
    cmd: String,
    pairs: Vec<(String, String)>,
}

impl Params {
    fn parse(cmd: &str, args: &[String], allowed: &[&str]) -> Result<Params, CtlError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for arg in args {
            let Some((key, value)) = arg.split_once('=') else {
                return Err(CtlError::usage(format!(
                    "{cmd}: expected key=value, got '{arg}'"
                )));
            };
            if !allowed.contains(&key) {
                let takes = allowed
                    .iter()
                    .map(|k| format!("{k}="))
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(CtlError::usage(format!(
                    "{cmd} does not take {key}=; it takes {takes}"
                )));
            }
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(CtlError::usage(format!("{cmd}: {key}= given twice")));
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Params {
            cmd: cmd.to_string(),
            pairs,
        })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A value that must be given (possibly empty).
    fn required(&self, key: &str) -> Result<&str, CtlError> {
        self.get(key)
            .ok_or_else(|| CtlError::usage(format!("{} needs {key}=…", self.cmd)))
    }

    /// A value that must be given and not empty (a name).
    fn name(&self, key: &str) -> Result<&str, CtlError> {
        match self.required(key)? {
            "" => Err(CtlError::usage(format!(
                "{} needs a non-empty {key}=…",
                self.cmd
            ))),
            v => Ok(v),
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, CtlError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
            Some(v) => Err(CtlError::usage(format!(
                "{}: {key}= must be true or false, not '{v}'",
                self.cmd
            ))),
        }
    }

    fn uint(&self, key: &str, default: u64) -> Result<u64, CtlError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                CtlError::usage(format!(
                    "{}: {key}= must be a whole number, not '{v}'",
                    self.cmd
                ))
            }),
        }
    }

    /// A JSON object (`arguments=`, `properties=`); `{}` when not given.
    fn object(&self, key: &str) -> Result<Map<String, Value>, CtlError> {
        let Some(text) = self.get(key) else {
            return Ok(Map::new());
        };
        if text.trim().is_empty() {
            return Ok(Map::new());
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(CtlError::usage(format!(
                "{}: {key}= must be a JSON object, e.g. {key}='{{\"x-max-length\":10}}'",
                self.cmd
            ))),
            Err(e) => Err(CtlError::usage(format!(
                "{}: {key}= is not valid JSON ({e})",
                self.cmd
            ))),
        }
    }

    /// One of `choices`, or `default`.
    fn choice<'a>(
        &'a self,
        key: &str,
        choices: &[&str],
        default: &'a str,
    ) -> Result<&'a str, CtlError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) if choices.contains(&v) => Ok(v),
            Some(v) => Err(CtlError::usage(format!(
                "{}: {key}= must be one of {}, not '{v}'",
                self.cmd,
                choices.join(", ")
            ))),
        }
    }
}

/// Comma-separated tags, tidied: "a, b" → "a,b".
fn tidy_tags(tags: &str) -> String {
    tags.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}

const QUEUE_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("messages", "messages"),
    ("messages_ready", "messages_ready"),
    ("messages_unacknowledged", "messages_unacknowledged"),
    ("consumers", "consumers"),
    // Leveret's: how long the next message has waited (empty elsewhere).
    ("head_message_age_ms", "head_message_age_ms"),
];
const EXCHANGE_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("type", "type"),
    ("durable", "durable"),
    ("auto_delete", "auto_delete"),
    ("internal", "internal"),
];
const BINDING_COLUMNS: &[Column] = &[
    ("source", "source"),
    ("destination", "destination"),
    ("destination_type", "destination_type"),
    ("routing_key", "routing_key"),
    ("properties_key", "properties_key"),
    ("arguments", "arguments"),
];
const CONSUMER_COLUMNS: &[Column] = &[
    ("queue", "queue.name"),
    ("consumer_tag", "consumer_tag"),
    ("channel", "channel_details.name"),
    ("ack_required", "ack_required"),
    ("prefetch_count", "prefetch_count"),
    ("exclusive", "exclusive"),
];
const PERMISSION_COLUMNS: &[Column] = &[
    ("user", "user"),
    ("configure", "configure"),
    ("write", "write"),
    ("read", "read"),
];
/// As rabbitmqctl list_policies.
const POLICY_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("pattern", "pattern"),
    ("apply-to", "apply-to"),
    ("definition", "definition"),
    ("priority", "priority"),
];
const CONNECTION_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("user", "user"),
    ("vhost", "vhost"),
    ("channels", "channels"),
    ("state", "state"),
];
const CHANNEL_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("user", "user"),
    ("vhost", "vhost"),
    ("consumer_count", "consumer_count"),
    ("messages_unacknowledged", "messages_unacknowledged"),
    ("prefetch_count", "prefetch_count"),
];
/// Named as rabbitmq-streams' columns.
const STREAM_CONNECTION_COLUMNS: &[Column] = &[
    ("conn_name", "name"),
    ("user", "user"),
    ("vhost", "vhost"),
    ("client", "user_provided_name"),
    ("frame_max", "frame_max"),
    ("heartbeat", "timeout"),
];
const STREAM_CONSUMER_COLUMNS: &[Column] = &[
    ("connection", "connection_details.name"),
    ("subscription_id", "subscription_id"),
    ("stream", "queue.name"),
    ("messages_consumed", "consumed"),
    ("offset", "offset"),
    ("offset_lag", "offset_lag"),
    ("credits", "credits"),
    ("active", "active"),
    ("activity_status", "activity_status"),
];
const STREAM_PUBLISHER_COLUMNS: &[Column] = &[
    ("connection", "connection_details.name"),
    ("publisher_id", "publisher_id"),
    ("stream", "queue.name"),
    ("reference", "reference"),
    ("messages_published", "published"),
    ("messages_confirmed", "confirmed"),
    ("messages_errored", "errored"),
];
const VHOST_COLUMNS: &[Column] = &[("name", "name"), ("messages", "messages")];
const USER_COLUMNS: &[Column] = &[("name", "name"), ("tags", "tags")];
const MESSAGE_COLUMNS: &[Column] = &[
    ("routing_key", "routing_key"),
    ("exchange", "exchange"),
    ("message_count", "message_count"),
    ("payload", "payload"),
    ("payload_bytes", "payload_bytes"),
    ("payload_encoding", "payload_encoding"),
    ("redelivered", "redelivered"),
];

const LISTABLE: &str = "queues, exchanges, bindings, consumers, permissions, policies, operator_policies, connections, channels, vhosts or users";

/// One command's state: the API, the options, the output so far.
struct Ctx<'o> {
    client: Client,
    vhost: String,
    format: Format,
    out: &'o mut String,
}

impl Ctx<'_> {
    fn dispatch(&mut self, command: &CtlCommand) -> Result<Outcome, CtlError> {
        use CtlCommand as C;
        match command {
            C::List { what, args } => self.list(what.as_deref(), args),
            C::Declare { what, args } => match what.as_deref() {
                Some("queue") => self.declare_queue(args),
                Some("exchange") => self.declare_exchange(args),
                Some("binding") => self.declare_binding(args),
                Some("user") => self.add_user("declare user", args),
                Some("vhost") => self.add_vhost("declare vhost", args),
                Some("permission" | "permissions") => {
                    self.set_permissions("declare permission", args)
                }
                other => Err(unknown_kind(
                    "declare",
                    other,
                    "queue, exchange, binding, user, vhost or permission",
                )),
            },
            C::Delete { what, args } => match what.as_deref() {
                Some("queue") => self.delete_queue(args),
                Some("exchange") => self.delete_exchange(args),
                Some("binding") => self.delete_binding(args),
                Some("user") => self.delete_user("delete user", args),
                Some("vhost") => self.delete_vhost("delete vhost", args),
                Some("permission" | "permissions") => {
                    self.clear_permissions("delete permission", args)
                }
                Some("connection") => self.close_connection("delete connection", args),
                other => Err(unknown_kind(
                    "delete",
                    other,
                    "queue, exchange, binding, user, vhost, permission or connection",
                )),
            },
            C::Purge { what, args } => match what.as_deref() {
                Some("queue") => self.purge_queue(args),
                other => Err(unknown_kind("purge", other, "queue")),
            },
            C::Close { what, args } => match what.as_deref() {
                Some("connection") => self.close_connection("close connection", args),
                other => Err(unknown_kind("close", other, "connection")),
            },
            C::Publish { args } => self.publish(args),
            C::Get { args } => self.get_messages(args),
            C::AddUser { args } => self.add_user("add_user", args),
            C::DeleteUser { args } => self.delete_user("delete_user", args),
            C::ChangePassword { args } => self.change_password(args),
            C::SetUserTags { args } => self.set_user_tags(args),
            C::AddVhost { args } => self.add_vhost("add_vhost", args),
            C::DeleteVhost { args } => self.delete_vhost("delete_vhost", args),
            C::SetPermissions { args } => self.set_permissions("set_permissions", args),
            C::ClearPermissions { args } => self.clear_permissions("clear_permissions", args),
            C::SetPolicy(a) => self.set_policy("policies", "set_policy", "policy", a),
            C::SetOperatorPolicy(a) => self.set_policy(
                "operator-policies",
                "set_operator_policy",
                "operator policy",
                a,
            ),
            C::ClearPolicy { name } => self.clear_policy("policies", "policy", name),
            C::ClearOperatorPolicy { name } => {
                self.clear_policy("operator-policies", "operator policy", name)
            }
            C::ListPolicies => self.list(Some("policies"), &[]),
            C::ListOperatorPolicies => self.list(Some("operator_policies"), &[]),
            C::SetVhostLimits { args } => self.set_vhost_limits(args),
            C::ClearVhostLimits { args } => self.clear_vhost_limits(args),
            C::ListVhostLimits { global } => self.list_vhost_limits(*global),
            C::SetUserLimits { args } => self.set_user_limits(args),
            C::ClearUserLimits { args } => self.clear_user_limits(args),
            C::ListUserLimits { args } => self.list_user_limits(args),
            C::SetTopicPermissions { args } => self.set_topic_permissions(args),
            C::ClearTopicPermissions { args } => self.clear_topic_permissions(args),
            C::ListTopicPermissions { args } => self.list_topic_permissions(args),
            C::Export { args } => self.export(args),
            C::Import {
                args,
                skip_unsupported,
            } => self.import(args, *skip_unsupported),
            C::AddSuperStream(a) => self.add_super_stream(a),
            C::DeleteSuperStream { name } => {
                let path = format!("/stream/super-streams/{}/{}", self.v(), enc(name));
                let missing = self.in_vhost(&format!("super stream '{name}'"));
                self.client.call(Method::Delete, &path, None, &missing)?;
                self.done("super stream deleted")
            }
            C::StreamStatus { name } => self.stream_status(name),
            C::ListStreamConnections => {
                let rows = self.client.get("/stream/connections", "")?;
                self.print_rows(rows, STREAM_CONNECTION_COLUMNS, true)?;
                Ok(Outcome::Ok)
            }
            C::ListStreamConsumers => {
                let path = format!("/stream/consumers/{}", self.v());
                let rows = self.client.get(&path, &format!("vhost '{}'", self.vhost))?;
                self.print_rows(rows, STREAM_CONSUMER_COLUMNS, true)?;
                Ok(Outcome::Ok)
            }
            C::ListStreamPublishers => {
                let path = format!("/stream/publishers/{}", self.v());
                let rows = self.client.get(&path, &format!("vhost '{}'", self.vhost))?;
                self.print_rows(rows, STREAM_PUBLISHER_COLUMNS, true)?;
                Ok(Outcome::Ok)
            }
            C::Status => self.status(),
            C::Health => self.health(),
            C::Cluster { what } => self.cluster(what.as_deref()),
            C::CheckIfNodeIsQuorumCritical => self.quorum_critical(),
            C::ForgetClusterNode { node } => self.forget_cluster_node(node),
            C::ReloadCertificates => self.reload_certificates(),
        }
    }

    /// The current vhost, URL-encoded for a path.
    fn v(&self) -> String {
        enc(&self.vhost)
    }

    fn in_vhost(&self, object: &str) -> String {
        format!("{object} in vhost '{}'", self.vhost)
    }

    /// One short line for a mutating command, unless the output is JSON.
    fn done(&mut self, line: &str) -> Result<Outcome, CtlError> {
        if self.format == Format::Table {
            self.out.push_str(line);
            self.out.push('\n');
        }
        Ok(Outcome::Ok)
    }

    fn print_json(&mut self, v: &Value) {
        let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        self.out.push_str(&text);
        self.out.push('\n');
    }

    /// Prints `rows` as a table (sorted when `sort`) or as JSON.
    fn print_rows(&mut self, rows: Value, columns: &[Column], sort: bool) -> Result<(), CtlError> {
        if self.format == Format::Json {
            self.print_json(&rows);
            return Ok(());
        }
        let Value::Array(mut rows) = rows else {
            return Err(CtlError::failed(format!(
                "unexpected reply from the API: expected a JSON array, got {}",
                truncated(&rows.to_string())
            )));
        };
        if sort {
            rows.sort_by_cached_key(|row| {
                columns
                    .iter()
                    .map(|(_, path)| table::cell(table::lookup(row, path)))
                    .collect::<Vec<_>>()
            });
        }
        self.out.push_str(&table::render(&rows, columns));
        Ok(())
    }

    fn list(&mut self, what: Option<&str>, args: &[String]) -> Result<Outcome, CtlError> {
        let Some(what) = what else {
            return Err(CtlError::usage(format!(
                "list needs what to list: {LISTABLE}"
            )));
        };
        if let Some(extra) = args.first() {
            return Err(CtlError::usage(format!(
                "list {what} takes no arguments, got '{extra}'"
            )));
        }
        let v = self.v();
        let vhost_what = format!("vhost '{}'", self.vhost);
        // Exchanges and bindings name the default exchange "", which says
        // nothing in a table: show it as the web UI does.
        let (path, columns, missing, unnamed) = match what {
            "queues" | "queue" => (format!("/queues/{v}"), QUEUE_COLUMNS, vhost_what, None),
            "exchanges" | "exchange" => (
                format!("/exchanges/{v}"),
                EXCHANGE_COLUMNS,
                vhost_what,
                Some("name"),
            ),
            "bindings" | "binding" => (
                format!("/bindings/{v}"),
                BINDING_COLUMNS,
                vhost_what,
                Some("source"),
            ),
            "consumers" | "consumer" => (
                format!("/consumers/{v}"),
                CONSUMER_COLUMNS,
                vhost_what,
                None,
            ),
            "permissions" | "permission" => (
                format!("/vhosts/{v}/permissions"),
                PERMISSION_COLUMNS,
                vhost_what,
                None,
            ),
            "policies" | "policy" => (format!("/policies/{v}"), POLICY_COLUMNS, vhost_what, None),
            "operator_policies" | "operator_policy" | "operator-policies" => (
                format!("/operator-policies/{v}"),
                POLICY_COLUMNS,
                vhost_what,
                None,
            ),
            "connections" | "connection" => (
                "/connections".into(),
                CONNECTION_COLUMNS,
                String::new(),
                None,
            ),
            "channels" | "channel" => ("/channels".into(), CHANNEL_COLUMNS, String::new(), None),
            "vhosts" | "vhost" => ("/vhosts".into(), VHOST_COLUMNS, String::new(), None),
            "users" | "user" => ("/users".into(), USER_COLUMNS, String::new(), None),
            other => {
                return Err(CtlError::usage(format!(
                    "list: unknown object type '{other}'; expected {LISTABLE}"
                )))
            }
        };
        let mut rows = self.client.get(&path, &missing)?;
        if let (Format::Table, Some(field), Value::Array(items)) = (self.format, unnamed, &mut rows)
        {
            for item in items {
                if item.get(field).and_then(Value::as_str) == Some("") {
                    item[field] = json!("(AMQP default)");
                }
            }
        }
        self.print_rows(rows, columns, true)?;
        Ok(Outcome::Ok)
    }

    fn declare_queue(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(
            "declare queue",
            args,
            &["name", "durable", "auto_delete", "queue_type", "arguments"],
        )?;
        let name = p.name("name")?;
        let mut arguments = p.object("arguments")?;
        if let Some(t) = p.get("queue_type") {
            arguments.insert("x-queue-type".into(), json!(t));
        }
        let body = json!({
            "durable": p.bool("durable", true)?,
            "auto_delete": p.bool("auto_delete", false)?,
            "arguments": arguments,
        });
        let path = format!("/queues/{}/{}", self.v(), enc(name));
        let missing = format!("vhost '{}'", self.vhost);
        self.client
            .call(Method::Put, &path, Some(&body), &missing)?;
        self.done("queue declared")
    }

    fn declare_exchange(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(
            "declare exchange",
            args,
            &[
                "name",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
            ],
        )?;
        let name = p.name("name")?;
        let body = json!({
            "type": p.name("type")?,
            "durable": p.bool("durable", true)?,
            "auto_delete": p.bool("auto_delete", false)?,
            "internal": p.bool("internal", false)?,
            "arguments": p.object("arguments")?,
        });
        let path = format!("/exchanges/{}/{}", self.v(), enc(name));
        let missing = format!("vhost '{}'", self.vhost);
        self.client
            .call(Method::Put, &path, Some(&body), &missing)?;
        self.done("exchange declared")
    }

    /// `e/SOURCE/q/DEST` and a description, for binding paths.
    fn binding_ends(&self, p: &Params) -> Result<(String, String), CtlError> {
        let source = p.name("source")?;
        let destination = p.name("destination")?;
        let kind = p.choice("destination_type", &["queue", "exchange"], "queue")?;
        let letter = if kind == "queue" { "q" } else { "e" };
        let path = format!(
            "/bindings/{}/e/{}/{letter}/{}",
            self.v(),
            enc(source),
            enc(destination)
        );
        let what = self.in_vhost(&format!("exchange '{source}' or {kind} '{destination}'"));
        Ok((path, what))
    }

    fn declare_binding(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(
            "declare binding",
            args,
            &[
                "source",
                "destination",
                "destination_type",
                "routing_key",
                "arguments",
            ],
        )?;
        let (path, what) = self.binding_ends(&p)?;
        let body = json!({
            "routing_key": p.get("routing_key").unwrap_or(""),
            "arguments": p.object("arguments")?,
        });
        self.client.call(Method::Post, &path, Some(&body), &what)?;
        self.done("binding declared")
    }

    fn delete_queue(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse("delete queue", args, &["name", "if_empty", "if_unused"])?;
        let name = p.name("name")?;
        let mut query = Vec::new();
        if p.bool("if_empty", false)? {
            query.push("if-empty=true");
        }
        if p.bool("if_unused", false)? {
            query.push("if-unused=true");
        }
        let mut path = format!("/queues/{}/{}", self.v(), enc(name));
        if !query.is_empty() {
            path = format!("{path}?{}", query.join("&"));
        }
        let what = self.in_vhost(&format!("queue '{name}'"));
        self.client.call(Method::Delete, &path, None, &what)?;
        self.done("queue deleted")
    }

    fn delete_exchange(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse("delete exchange", args, &["name", "if_unused"])?;
        let name = p.name("name")?;
        let mut path = format!("/exchanges/{}/{}", self.v(), enc(name));
        if p.bool("if_unused", false)? {
            path.push_str("?if-unused=true");
        }
        let what = self.in_vhost(&format!("exchange '{name}'"));
        self.client.call(Method::Delete, &path, None, &what)?;
        self.done("exchange deleted")
    }

    /// Deletes one binding, named by its properties_key or found by its
    /// routing key (and arguments) among the bindings between the two ends.
    fn delete_binding(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(
            "delete binding",
            args,
            &[
                "source",
                "destination",
                "destination_type",
                "properties_key",
                "routing_key",
                "arguments",
            ],
        )?;
        let (path, what) = self.binding_ends(&p)?;
        let key = match (p.get("properties_key"), p.get("routing_key")) {
            (Some(key), _) => key.to_string(),
            (None, Some(routing_key)) => {
                let arguments = p
                    .get("arguments")
                    .map(|_| p.object("arguments"))
                    .transpose()?;
                let bindings = self.client.get(&path, &what)?;
                let matching: Vec<&Value> = bindings
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b.get("routing_key").and_then(Value::as_str) == Some(routing_key))
                    .filter(|b| match &arguments {
                        None => true,
                        Some(args) => {
                            let theirs = b.get("arguments").and_then(Value::as_object);
                            theirs.unwrap_or(&Map::new()) == args
                        }
                    })
                    .collect();
                let described = format!(
                    "binding from exchange '{}' to {} '{}' with routing key '{routing_key}'",
                    p.get("source").unwrap_or(""),
                    p.get("destination_type").unwrap_or("queue"),
                    p.get("destination").unwrap_or(""),
                );
                match matching.as_slice() {
                    [one] => one
                        .get("properties_key")
                        .and_then(Value::as_str)
                        .ok_or_else(|| {
                            CtlError::failed(format!(
                                "the API gave no properties_key for the {described}"
                            ))
                        })?
                        .to_string(),
                    [] => {
                        return Err(CtlError::failed(format!(
                            "no {}",
                            self.in_vhost(&described)
                        )))
                    }
                    many => {
                        return Err(CtlError::usage(format!(
                            "{} bindings match the {described}; give arguments= or \
                             properties_key= (see list bindings)",
                            many.len()
                        )))
                    }
                }
            }
            (None, None) => {
                return Err(CtlError::usage(
                    "delete binding needs properties_key=… or routing_key=…",
                ))
            }
        };
        // properties_key is opaque (RabbitMQ's is already percent-encoded,
        // "a.%23~9nmLZQ"): it is one more path segment, encoded as such.
        let path = format!("{path}/{}", enc(&key));
        let what = self.in_vhost(&format!(
            "binding '{key}' from exchange '{}' to {} '{}'",
            p.get("source").unwrap_or(""),
            p.get("destination_type").unwrap_or("queue"),
            p.get("destination").unwrap_or(""),
        ));
        self.client.call(Method::Delete, &path, None, &what)?;
        self.done("binding deleted")
    }

    fn purge_queue(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse("purge queue", args, &["name"])?;
        let name = p.name("name")?;
        let path = format!("/queues/{}/{}/contents", self.v(), enc(name));
        let what = self.in_vhost(&format!("queue '{name}'"));
        self.client.call(Method::Delete, &path, None, &what)?;
        self.done("queue purged")
    }

    fn publish(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(
            "publish",
            args,
            &[
                "exchange",
                "routing_key",
                "payload",
                "payload_encoding",
                "properties",
            ],
        )?;
        let exchange = p.get("exchange").unwrap_or("");
        let routing_key = p.required("routing_key")?;
        let encoding = p.choice("payload_encoding", &["string", "base64"], "string")?;
        let properties = p.object("properties")?;
        let payload = match p.get("payload") {
            Some(payload) => payload.to_string(),
            None => {
                let mut stdin = std::io::stdin();
                if stdin.is_terminal() {
                    let _ = writeln!(
                        std::io::stderr(),
                        "leveret ctl: reading the payload from standard input (end with Ctrl-D)"
                    );
                }
                let mut text = String::new();
                stdin.read_to_string(&mut text).map_err(|e| {
                    CtlError::failed(format!(
                        "could not read the payload from standard input: {e}"
                    ))
                })?;
                text
            }
        };
        // The default exchange has no name; the API calls it amq.default.
        let path_name = if exchange.is_empty() {
            "amq.default"
        } else {
            exchange
        };
        let path = format!("/exchanges/{}/{}/publish", self.v(), enc(path_name));
        let body = json!({
            "properties": properties,
            "routing_key": routing_key,
            "payload": payload,
            "payload_encoding": encoding,
        });
        let what = self.in_vhost(&format!("exchange '{path_name}'"));
        let reply = self.client.call(Method::Post, &path, Some(&body), &what)?;
        if self.format == Format::Json {
            self.print_json(&reply);
            return Ok(Outcome::Ok);
        }
        match reply.get("routed").and_then(Value::as_bool) {
            Some(true) => self.done("message published"),
            Some(false) => self.done("message published but NOT routed"),
            None => self.done("message published"),
        }
    }

    fn get_messages(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(
            "get",
            args,
            &["queue", "count", "ackmode", "encoding", "truncate"],
        )?;
        let queue = p.name("queue")?;
        let body = json!({
            "count": p.uint("count", 1)?,
            "ackmode": p.choice(
                "ackmode",
                &[
                    "ack_requeue_true",
                    "ack_requeue_false",
                    "reject_requeue_true",
                    "reject_requeue_false",
                ],
                "ack_requeue_true",
            )?,
            "encoding": p.choice("encoding", &["auto", "base64"], "auto")?,
            "truncate": p.uint("truncate", 50000)?,
        });
        let path = format!("/queues/{}/{}/get", self.v(), enc(queue));
        let what = self.in_vhost(&format!("queue '{queue}'"));
        let messages = self.client.call(Method::Post, &path, Some(&body), &what)?;
        self.print_rows(messages, MESSAGE_COLUMNS, false)?;
        Ok(Outcome::Ok)
    }

    fn close_connection(&mut self, cmd: &str, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(cmd, args, &["name", "reason"])?;
        let name = p.name("name")?;
        let path = format!("/connections/{}", enc(name));
        let mut headers = Vec::new();
        if let Some(reason) = p.get("reason") {
            headers.push(("x-reason", reason));
        }
        let reply = self
            .client
            .send_with(Method::Delete, &path, None, &headers)?;
        self.client.check(&reply, &format!("connection '{name}'"))?;
        self.done("connection closed")
    }

    fn add_user(&mut self, cmd: &str, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(cmd, args, &["name", "password", "tags"])?;
        let name = p.name("name")?;
        let body = json!({
            "password": p.required("password")?,
            "tags": tidy_tags(p.get("tags").unwrap_or("")),
        });
        let path = format!("/users/{}", enc(name));
        self.client.call(Method::Put, &path, Some(&body), "")?;
        self.done("user added")
    }

    fn delete_user(&mut self, cmd: &str, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(cmd, args, &["name"])?;
        let name = p.name("name")?;
        let path = format!("/users/{}", enc(name));
        self.client
            .call(Method::Delete, &path, None, &format!("user '{name}'"))?;
        self.done("user deleted")
    }

    /// The user as the API has it, to keep what a change leaves alone.
    fn read_user(&self, name: &str) -> Result<Value, CtlError> {
        self.client
            .get(&format!("/users/{}", enc(name)), &format!("user '{name}'"))
    }

    fn change_password(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse("change_password", args, &["name", "password"])?;
        let name = p.name("name")?;
        let password = p.required("password")?;
        let user = self.read_user(name)?;
        let body = json!({
            "password": password,
            "tags": tidy_tags(&table::cell(user.get("tags"))),
        });
        let path = format!("/users/{}", enc(name));
        self.client.call(Method::Put, &path, Some(&body), "")?;
        self.done("password changed")
    }

    fn set_user_tags(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse("set_user_tags", args, &["name", "tags"])?;
        let name = p.name("name")?;
        let tags = tidy_tags(p.required("tags")?);
        let user = self.read_user(name)?;
        let Some(hash) = user.get("password_hash").and_then(Value::as_str) else {
            return Err(CtlError::failed(format!(
                "cannot keep the password of user '{name}': the API did not return its password_hash"
            )));
        };
        let mut body = json!({ "password_hash": hash, "tags": tags });
        if let Some(algorithm) = user.get("hashing_algorithm").and_then(Value::as_str) {
            body["hashing_algorithm"] = json!(algorithm);
        }
        let path = format!("/users/{}", enc(name));
        self.client.call(Method::Put, &path, Some(&body), "")?;
        self.done("user tags set")
    }

    fn add_vhost(&mut self, cmd: &str, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(cmd, args, &["name", "description", "tags", "tracing"])?;
        let name = p.name("name")?;
        let mut body = json!({});
        if let Some(d) = p.get("description") {
            body["description"] = json!(d);
        }
        if let Some(t) = p.get("tags") {
            body["tags"] = json!(tidy_tags(t));
        }
        if p.get("tracing").is_some() {
            body["tracing"] = json!(p.bool("tracing", false)?);
        }
        let path = format!("/vhosts/{}", enc(name));
        self.client.call(Method::Put, &path, Some(&body), "")?;
        self.done("vhost added")
    }

    fn delete_vhost(&mut self, cmd: &str, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(cmd, args, &["name"])?;
        let name = p.name("name")?;
        let path = format!("/vhosts/{}", enc(name));
        self.client
            .call(Method::Delete, &path, None, &format!("vhost '{name}'"))?;
        self.done("vhost deleted")
    }

    fn set_permissions(&mut self, cmd: &str, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(cmd, args, &["user", "vhost", "configure", "write", "read"])?;
        let user = p.name("user")?;
        let vhost = p.get("vhost").unwrap_or(&self.vhost).to_string();
        let body = json!({
            "configure": p.required("configure")?,
            "write": p.required("write")?,
            "read": p.required("read")?,
        });
        let path = format!("/permissions/{}/{}", enc(&vhost), enc(user));
        let what = format!("user '{user}' or vhost '{vhost}'");
        self.client.call(Method::Put, &path, Some(&body), &what)?;
        self.done("permissions set")
    }

    fn clear_permissions(&mut self, cmd: &str, args: &[String]) -> Result<Outcome, CtlError> {
        let p = Params::parse(cmd, args, &["user", "vhost"])?;
        let user = p.name("user")?;
        let vhost = p.get("vhost").unwrap_or(&self.vhost).to_string();
        let path = format!("/permissions/{}/{}", enc(&vhost), enc(user));
        let what = format!("permissions of user '{user}' in vhost '{vhost}'");
        self.client.call(Method::Delete, &path, None, &what)?;
        self.done("permissions cleared")
    }

    /// `kind` is the API's path segment: policies or operator-policies.
    fn set_policy(
        &mut self,
        kind: &str,
        cmd: &str,
        what: &str,
        a: &PolicyArgs,
    ) -> Result<Outcome, CtlError> {
        let definition: Value = serde_json::from_str(&a.definition)
            .map_err(|e| CtlError::usage(format!("{cmd}: DEFINITION is not valid JSON ({e})")))?;
        let body = json!({
            "pattern": a.pattern,
            "definition": definition,
            "priority": a.priority,
            "apply-to": a.apply_to,
        });
        let path = format!("/{kind}/{}/{}", self.v(), enc(&a.name));
        let vhost = format!("vhost '{}'", self.vhost);
        self.client.call(Method::Put, &path, Some(&body), &vhost)?;
        self.done(&format!("{what} set"))
    }

    fn add_super_stream(&mut self, a: &SuperStreamArgs) -> Result<Outcome, CtlError> {
        let mut arguments = serde_json::Map::new();
        if let Some(age) = &a.max_age {
            arguments.insert("x-max-age".into(), json!(age));
        }
        if let Some(n) = a.max_length_bytes {
            arguments.insert("x-max-length-bytes".into(), json!(n));
        }
        if let Some(n) = a.max_segment_size_bytes {
            arguments.insert("x-stream-max-segment-size-bytes".into(), json!(n));
        }
        let body = match (&a.partitions, &a.binding_keys) {
            (_, Some(keys)) => json!({"binding-keys": keys, "arguments": arguments}),
            (Some(n), None) => json!({"partitions": n, "arguments": arguments}),
            (None, None) => json!({"partitions": 3, "arguments": arguments}),
        };
        let path = format!("/stream/super-streams/{}/{}", self.v(), enc(&a.name));
        let vhost = format!("vhost '{}'", self.vhost);
        self.client.call(Method::Put, &path, Some(&body), &vhost)?;
        self.done("super stream added")
    }

    fn stream_status(&mut self, name: &str) -> Result<Outcome, CtlError> {
        let path = format!("/queues/{}/{}", self.v(), enc(name));
        let q = self
            .client
            .get(&path, &self.in_vhost(&format!("queue '{name}'")))?;
        let Some(stream) = q.get("stream").filter(|s| s.is_object()) else {
            return Err(CtlError::failed(format!("queue '{name}' is not a stream")));
        };
        if self.format == Format::Json {
            self.out.push_str(&stream.to_string());
            self.out.push('\n');
            return Ok(Outcome::Ok);
        }
        let n = |v: &Value| match v {
            Value::Null => "-".to_string(),
            v => v.to_string(),
        };
        self.out.push_str(&format!(
            "first offset {}, last offset {}, {} segments, {} bytes\n",
            n(&stream["first_offset"]),
            n(&stream["last_offset"]),
            n(&stream["segments"]),
            n(&stream["bytes"])
        ));
        let mut rows = Vec::new();
        for r in stream["readers"].as_array().into_iter().flatten() {
            let tag = r["consumer_tag"].as_str().unwrap_or_default();
            let reader = match r["connection"].as_str() {
                Some(connection) => format!("consumer {tag} ({connection})"),
                None => format!("consumer {tag}"),
            };
            rows.push(json!({"reader": reader, "offset": r["offset"], "lag": r["lag"]}));
        }
        for (reader, stored) in stream["stored_offsets"].as_object().into_iter().flatten() {
            rows.push(json!({"reader": format!("stored {reader}"), "offset": stored["offset"], "lag": stored["lag"]}));
        }
        if !rows.is_empty() {
            let columns = [("reader", "reader"), ("offset", "offset"), ("lag", "lag")];
            self.out.push_str(&table::render(&rows, &columns));
        }
        Ok(Outcome::Ok)
    }

    fn clear_policy(&mut self, kind: &str, what: &str, name: &str) -> Result<Outcome, CtlError> {
        let path = format!("/{kind}/{}/{}", self.v(), enc(name));
        let missing = self.in_vhost(&format!("{what} '{name}'"));
        self.client.call(Method::Delete, &path, None, &missing)?;
        self.done(&format!("{what} cleared"))
    }

    fn export(&mut self, args: &[String]) -> Result<Outcome, CtlError> {
        let file = definitions_file("export", args, "standard output")?;
        let definitions = self.client.get("/definitions", "")?;
        let mut text =
            serde_json::to_string_pretty(&definitions).unwrap_or_else(|_| definitions.to_string());
        text.push('\n');
        if file == "-" {
            self.out.push_str(&text);
            return Ok(Outcome::Ok);
        }
        std::fs::write(&file, text)
            .map_err(|e| CtlError::failed(format!("could not write {file}: {e}")))?;
        self.done(&format!("definitions exported to {file}"))
    }

    fn import(&mut self, args: &[String], skip_unsupported: bool) -> Result<Outcome, CtlError> {
        let file = definitions_file("import", args, "standard input")?;
        let text = if file == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CtlError::failed(format!("could not read standard input: {e}")))?;
            text
        } else {
            std::fs::read_to_string(&file)
                .map_err(|e| CtlError::failed(format!("could not read {file}: {e}")))?
        };
        let from = if file == "-" { "standard input" } else { &file };
        let definitions: Value = serde_json::from_str(&text)
            .map_err(|e| CtlError::failed(format!("{from} is not JSON: {e}")))?;
        if !definitions.is_object() {
            return Err(CtlError::failed(format!(
                "{from} does not hold definitions (expected a JSON object)"
            )));
        }
        let path = if skip_unsupported {
            "/definitions?skip_unsupported=true"
        } else {
            "/definitions"
        };
        let reply = self
            .client
            .call(Method::Post, path, Some(&definitions), "")?;
        let skipped = reply["skipped"].as_array().map_or(&[][..], Vec::as_slice);
        let mut line = format!("definitions imported from {from}");
        for s in skipped {
            let (what, why) = (s["what"].as_str(), s["why"].as_str());
            line.push_str(&format!(
                "\nleft out: {}: {}",
                what.unwrap_or("?"),
                why.unwrap_or("?")
            ));
        }
        self.done(&line)
    }

    fn status(&mut self) -> Result<Outcome, CtlError> {
        let o = self.client.get("/overview", "")?;
        if self.format == Format::Json {
            self.print_json(&o);
            return Ok(Outcome::Ok);
        }
        let text = |path: &str| -> Option<String> {
            table::lookup(&o, path)
                .filter(|v| !v.is_null())
                .map(|v| table::cell(Some(v)))
        };
        let product = match (text("product_name"), text("product_version")) {
            (Some(name), Some(version)) => Some(format!("{name} {version}")),
            (Some(name), None) => Some(name),
            (None, _) => text("rabbitmq_version").map(|v| format!("RabbitMQ {v}")),
        };
        let listeners = o.get("listeners").and_then(Value::as_array).map(|ls| {
            ls.iter()
                .map(|l| {
                    format!(
                        "{} {}",
                        table::cell(l.get("protocol")),
                        table::cell(l.get("port"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        let messages = text("queue_totals.messages").map(|m| {
            match (
                text("queue_totals.messages_ready"),
                text("queue_totals.messages_unacknowledged"),
            ) {
                (Some(r), Some(u)) => format!("{m} ({r} ready, {u} unacknowledged)"),
                _ => m,
            }
        });
        let rate = |stat: &str| {
            table::lookup(&o, &format!("message_stats.{stat}_details.rate"))
                .and_then(Value::as_f64)
                .map(|r| format!("{r:.1}/s"))
        };
        let pairs = [
            ("product", product),
            ("management version", text("management_version")),
            ("node", text("node")),
            ("cluster", text("cluster_name")),
            ("erlang", text("erlang_version")),
            ("listeners", listeners),
            ("connections", text("object_totals.connections")),
            ("channels", text("object_totals.channels")),
            ("exchanges", text("object_totals.exchanges")),
            ("queues", text("object_totals.queues")),
            ("consumers", text("object_totals.consumers")),
            ("messages", messages),
            ("publish rate", rate("publish")),
            ("deliver/get rate", rate("deliver_get")),
            ("ack rate", rate("ack")),
            ("confirm rate", rate("confirm")),
        ];
        self.out.push_str(&table::render_pairs(&pairs));
        Ok(Outcome::Ok)
    }

    /// POST /api/tls/reload: 204, or 400 naming the file that was refused
    /// (the broker keeps serving the certificates it had).
    fn reload_certificates(&mut self) -> Result<Outcome, CtlError> {
        self.client
            .call(Method::Post, "/tls/reload", None, "the TLS certificates")?;
        self.done("certificates reloaded")
    }

    /// GET /api/health/checks/alarms: 200 `{"status":"ok"}`, or 503
    /// `{"status":"failed","reason":…,"alarms":[…]}`.
    fn health(&mut self) -> Result<Outcome, CtlError> {
        let reply = self
            .client
            .send(Method::Get, "/health/checks/alarms", None)?;
        let body = reply.json();
        let status = body.get("status").and_then(Value::as_str);
        let healthy = match (reply.status, status) {
            (200, Some("ok")) | (200, None) => true,
            (200 | 503, _) => false,
            _ => {
                self.client.check(&reply, "the alarms health check")?;
                false
            }
        };
        if self.format == Format::Json {
            self.print_json(&body);
        } else if healthy {
            self.out.push_str("ok\n");
        } else {
            let reason = body
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("the health check failed");
            self.out.push_str(&format!("failed: {reason}\n"));
            for alarm in body
                .get("alarms")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let resource = table::cell(alarm.get("resource"));
                let node = table::cell(alarm.get("node"));
                self.out
                    .push_str(&format!("  {resource} alarm on {node}\n"));
            }
        }
        Ok(if healthy {
            Outcome::Ok
        } else {
            Outcome::Unhealthy
        })
    }
}

/// The FILE of `export FILE` / `export definitions FILE`.
fn definitions_file(cmd: &str, args: &[String], dash: &str) -> Result<String, CtlError> {
    match args {
        [file] if file != "definitions" => Ok(file.clone()),
        [kind, file] if kind == "definitions" => Ok(file.clone()),
        [] | [_] => Err(CtlError::usage(format!(
            "{cmd} needs a FILE (- for {dash})"
        ))),
        _ => Err(CtlError::usage(format!(
            "{cmd} takes one FILE, got '{}'",
            args.join(" ")
        ))),
    }
}

fn unknown_kind(cmd: &str, what: Option<&str>, expected: &str) -> CtlError {
    match what {
        None => CtlError::usage(format!("{cmd} what? expected {expected}")),
        Some(other) => CtlError::usage(format!(
            "{cmd}: unknown object type '{other}'; expected {expected}"
        )),
    }
}

fn truncated(s: &str) -> String {
    if s.chars().count() <= 120 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(120).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(args: &[&str], allowed: &[&str]) -> Result<Params, CtlError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Params::parse("declare queue", &args, allowed)
    }

    #[test]
    fn key_value_arguments() {
        let p = params(
            &["name=q", "arguments={\"a\":\"b=c\"}"],
            &["name", "arguments"],
        )
        .unwrap();
        assert_eq!(p.name("name").unwrap(), "q");
        assert_eq!(p.object("arguments").unwrap()["a"], "b=c");
        assert_eq!(
            p.required("durable").unwrap_err().message,
            "declare queue needs durable=…"
        );
        assert!(params(&["name"], &["name"]).unwrap_err().usage);
        assert!(params(&["nme=q"], &["name"])
            .unwrap_err()
            .message
            .contains("does not take nme="));
        assert!(params(&["name=a", "name=b"], &["name"]).is_err());
        let p = params(&["durable=yes"], &["durable"]).unwrap();
        assert!(p.bool("durable", true).is_err());
        let p = params(&["arguments=[1]"], &["arguments"]).unwrap();
        assert!(p.object("arguments").is_err());
    }

    #[test]
    fn definitions_file_forms() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            definitions_file("export", &s(&["f.json"]), "").unwrap(),
            "f.json"
        );
        assert_eq!(
            definitions_file("export", &s(&["definitions", "-"]), "").unwrap(),
            "-"
        );
        assert!(definitions_file("export", &s(&[]), "").is_err());
        assert!(definitions_file("export", &s(&["definitions"]), "").is_err());
        assert!(definitions_file("export", &s(&["a", "b"]), "").is_err());
    }

    #[test]
    fn tags_are_tidied() {
        assert_eq!(tidy_tags(" a, b ,,c"), "a,b,c");
        assert_eq!(tidy_tags(""), "");
    }
}

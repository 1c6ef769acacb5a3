//! A node as the cluster knows it: the record each node keeps in etcd
//! under `<prefix>/nodes/<node_name>`, bound to its lease (so a node that
//! dies drops out of the list when its lease runs out), and a copy under
//! `<prefix>/known/<node_name>` that stays until the node is forgotten.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_name: String,
    /// The AMQP URI clients should use for this node.
    pub advertised_uri: String,
    /// `HOST:PORT` followers replicate from when this node leads.
    pub replication: String,
    /// `HOST:PORT` of the management API ("" if off).
    pub management: String,
    /// `HOST:PORT` per client listener ("" if off): where a follower
    /// forwards the clients it accepts when this node leads.
    pub amqp: String,
    pub amqps: String,
    pub stream: String,
    pub stream_tls: String,
    pub version: String,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
}

impl Member {
    /// The address a follower forwards a client of `protocol` (`amqp`,
    /// `amqp/ssl`, `stream`, `stream/ssl`) to, if this node has one.
    pub fn address_for(&self, protocol: &str) -> Option<&str> {
        let a = match protocol {
            "amqp" => &self.amqp,
            "amqp/ssl" => &self.amqps,
            "stream" => &self.stream,
            "stream/ssl" => &self.stream_tls,
            _ => return None,
        };
        (!a.is_empty()).then_some(a.as_str())
    }
}

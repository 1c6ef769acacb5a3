//! Where the cluster keeps its state in etcd: everything under
//! `/leveret/<cluster name>/`.

pub(crate) struct Keys {
    pub(crate) prefix: String,
}

impl Keys {
    pub(crate) fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("/leveret/{cluster}/"),
        }
    }

    /// The leader's member record, bound to its lease; its create revision
    /// is the leader's term.
    pub(crate) fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// The in-sync replica set, written by the leader only.
    pub(crate) fn isr(&self) -> String {
        format!("{}isr", self.prefix)
    }

    /// The secret nodes prove to each other on the replication port,
    /// made once by the first node that needs it.
    pub(crate) fn secret(&self) -> String {
        format!("{}secret", self.prefix)
    }

    /// The running nodes' records, each bound to its node's lease.
    pub(crate) fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    pub(crate) fn node(&self, name: &str) -> String {
        format!("{}nodes/{name}", self.prefix)
    }

    /// Every node that joined and was not forgotten, running or not (as
    /// RabbitMQ's disc nodes): its last record, bound to no lease.
    pub(crate) fn known(&self) -> String {
        format!("{}known/", self.prefix)
    }

    pub(crate) fn known_node(&self, name: &str) -> String {
        format!("{}known/{name}", self.prefix)
    }
}

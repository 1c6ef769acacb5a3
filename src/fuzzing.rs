//! What the fuzz harness (fuzz/, also run by tests/fuzz_regressions.rs) needs
//! beyond the public surface: putting the default vhost back between inputs
//! without restarting the broker.

use crate::broker::access::{Permission, VhostRecord};
use crate::Broker;

/// Deletes the default vhost, which closes every connection in it.
pub fn close_default_vhost(broker: &Broker) {
    broker.delete_vhost("/");
}

/// A fresh default vhost with guest's full permissions.
pub fn recreate_default_vhost(broker: &Broker) {
    broker.delete_vhost("/");
    broker.create_vhost(VhostRecord {
        name: "/".into(),
        ..Default::default()
    });
    broker.access.put_permission(Permission::full("guest", "/"));
}

/// The names of the default vhost's exchanges (empty when it is gone).
pub fn default_vhost_exchanges(broker: &Broker) -> Option<Vec<String>> {
    let vhost = broker.vhost("/")?;
    Some(vhost.exchanges().iter().map(|e| e.name.clone()).collect())
}

/// Deletes every queue of the default vhost and every exchange not in `keep`.
pub fn clear_default_vhost(broker: &Broker, keep: &[String]) {
    let Some(vhost) = broker.vhost("/") else {
        return;
    };
    for queue in vhost.queues() {
        vhost.delete_queue(&queue);
    }
    for e in vhost.exchanges() {
        if !keep.contains(&e.name) {
            let _ = vhost.delete_exchange(&e.name, false);
        }
    }
}

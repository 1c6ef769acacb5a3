//! Runtime parameters of components other than `vhost-limits` (which are a
//! vhost's limits, kept in `access`): today the `shovel` component. Each is
//! a JSON value checked by its component before it is set; here it is only
//! kept, written through to the store's `access` tree (beside policies),
//! dropped with its vhost, and announced to whoever runs the component
//! (`subscribe`), so the broker does not depend on the shovel's runner.

use crate::store::Store;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// The dynamic shovels' component.
pub(crate) const SHOVEL: &str = "shovel";

/// One parameter as the API and definitions show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct ParameterRecord {
    pub(crate) component: String,
    pub(crate) vhost: String,
    pub(crate) name: String,
    pub(crate) value: Value,
}

/// (component, vhost, name): the order RabbitMQ lists them in.
type Key = (String, String, String);

const PREFIX: &[u8] = b"R\0";

fn store_key(component: &str, vhost: &str, name: &str) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    for (i, part) in [component, vhost, name].iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(part.as_bytes());
    }
    k
}

pub(crate) struct RuntimeParameters {
    store: Arc<Store>,
    all: RwLock<BTreeMap<Key, Arc<ParameterRecord>>>,
    /// Bumped on every change.
    changed: watch::Sender<u64>,
}

impl RuntimeParameters {
    /// The parameters among the stored access records. One that does not
    /// decode is an error, as a policy's: starting without it would drop
    /// a shovel silently.
    pub(crate) fn load(
        store: Arc<Store>,
        entries: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<RuntimeParameters, String> {
        let mut all = BTreeMap::new();
        for (k, v) in entries.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
            let r: ParameterRecord = serde_json::from_slice(v).map_err(|e| {
                format!(
                    "unreadable runtime parameter record {:?}: {e}",
                    String::from_utf8_lossy(k)
                )
            })?;
            all.insert(
                (r.component.clone(), r.vhost.clone(), r.name.clone()),
                Arc::new(r),
            );
        }
        Ok(RuntimeParameters {
            store,
            all: RwLock::new(all),
            changed: watch::channel(0).0,
        })
    }

    /// Completes at each change after this call.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// A component's parameters, of one vhost if given, by vhost and name.
    pub(crate) fn list(&self, component: &str, vhost: Option<&str>) -> Vec<Arc<ParameterRecord>> {
        self.all
            .read()
            .values()
            .filter(|r| r.component == component && vhost.is_none_or(|v| v == r.vhost))
            .cloned()
            .collect()
    }

    /// Sets a parameter (already checked by its component); true when new.
    /// The store write is queued under the lock, so that two changes reach
    /// the store in the order they took effect.
    pub(crate) fn put(&self, record: ParameterRecord) -> bool {
        let k = store_key(&record.component, &record.vhost, &record.name);
        let v = serde_json::to_vec(&record).expect("a parameter serialises");
        let created = {
            let mut all = self.all.write();
            self.store.put_access(&k, Some(&v));
            let key = (
                record.component.clone(),
                record.vhost.clone(),
                record.name.clone(),
            );
            all.insert(key, Arc::new(record)).is_none()
        };
        self.bump();
        created
    }

    /// Clears a parameter; false when there was none.
    pub(crate) fn delete(&self, component: &str, vhost: &str, name: &str) -> bool {
        let key = (component.to_string(), vhost.to_string(), name.to_string());
        {
            let mut all = self.all.write();
            if all.remove(&key).is_none() {
                return false;
            }
            self.store
                .put_access(&store_key(component, vhost, name), None);
        }
        self.bump();
        true
    }

    /// Clears every parameter of a deleted vhost.
    pub(crate) fn delete_vhost(&self, vhost: &str) {
        let mut removed = false;
        {
            let mut all = self.all.write();
            all.retain(|(component, v, name), _| {
                if v != vhost {
                    return true;
                }
                self.store.put_access(&store_key(component, v, name), None);
                removed = true;
                false
            });
        }
        if removed {
            self.bump();
        }
    }
}

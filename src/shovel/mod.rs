//! Dynamic shovels (RabbitMQ's `rabbitmq_shovel`): each `shovel` runtime
//! parameter (`broker::parameters`, stored with the access records) is a
//! worker task that moves messages from a source queue or exchange to a
//! destination. The supervisor task started by `server::serve_on` follows
//! the parameters: a new or changed one (re)starts its worker, a cleared
//! one (by the API, its vhost's deletion, or itself once `src-delete-after`
//! is reached) stops it. Stopping requeues whatever was not settled.
//!
//! A layer beside `mgmt`: it uses `broker` (a consumer on the source
//! queue, `ops::publish` to the destination) and `store` (confirms); the
//! management API reads its statuses and restarts workers.

mod definition;
mod local;
mod status;
mod uri;
mod worker;

pub(crate) use definition::{validate, AnyVhost, VhostAccess};
pub(crate) use status::{State, Status};

use crate::broker::parameters::SHOVEL;
use crate::broker::Broker;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long shutdown waits for workers to put back what they hold.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The running shovels, by (vhost, name).
pub(crate) struct Shovels {
    broker: Arc<Broker>,
    running: Mutex<BTreeMap<(String, String), Running>>,
    node: String,
}

struct Running {
    value: Value,
    status: Arc<Mutex<Status>>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn stop(self) -> Option<JoinHandle<()>> {
        let _ = self.stop.send(true);
        self.task
    }
}

impl Shovels {
    /// Starts the shovels the broker holds and follows their changes until
    /// `shutdown`; the handle completes once every worker has stopped.
    pub(crate) fn start(
        broker: Arc<Broker>,
        mut shutdown: watch::Receiver<bool>,
    ) -> (Arc<Shovels>, JoinHandle<()>) {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let shovels = Arc::new(Shovels {
            broker: broker.clone(),
            running: Mutex::new(BTreeMap::new()),
            // As the management API names the node.
            node: format!("leveret@{host}"),
        });
        let me = shovels.clone();
        let supervisor = tokio::spawn(async move {
            let mut changes = broker.parameters.subscribe();
            loop {
                me.sync();
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
            me.stop_all().await;
        });
        (shovels, supervisor)
    }

    /// Starts, restarts and stops workers to match the parameters.
    fn sync(&self) {
        let wanted = self.broker.parameters.list(SHOVEL, None);
        let mut stopped = Vec::new();
        let mut running = self.running.lock();
        let keys: Vec<_> = running.keys().cloned().collect();
        for key in keys {
            if !wanted.iter().any(|p| p.vhost == key.0 && p.name == key.1) {
                stopped.extend(running.remove(&key).and_then(Running::stop));
            }
        }
        for p in wanted {
            let key = (p.vhost.clone(), p.name.clone());
            if running.get(&key).is_some_and(|r| r.value == p.value) {
                continue;
            }
            if let Some(old) = running.remove(&key) {
                stopped.extend(old.stop());
            }
            running.insert(key, self.spawn(&p.vhost, &p.name, &p.value));
        }
        drop(running);
        // A replaced worker puts back what it held on its own.
        drop(stopped);
    }

    fn spawn(&self, vhost: &str, name: &str, value: &Value) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let status = Arc::new(Mutex::new(Status::starting()));
        let task = match definition::parse(value) {
            Ok(spec) => Some(tokio::spawn(
                worker::Worker {
                    broker: self.broker.clone(),
                    vhost: vhost.to_string(),
                    name: name.to_string(),
                    spec,
                    status: status.clone(),
                    stop: stop_rx,
                    node: self.node.clone(),
                }
                .run(),
            )),
            Err(reason) => {
                status.lock().set(State::Terminated(reason));
                None
            }
        };
        Running {
            value: value.clone(),
            status,
            stop,
            task,
        }
    }

    /// Every shovel's status, by vhost and name.
    pub(crate) fn statuses(&self) -> Vec<(String, String, Status)> {
        self.running
            .lock()
            .iter()
            .map(|((v, n), r)| (v.clone(), n.clone(), r.status.lock().clone()))
            .collect()
    }

    /// Stops a shovel's worker and starts a new one; false when there is
    /// no such shovel.
    pub(crate) fn restart(&self, vhost: &str, name: &str) -> bool {
        let key = (vhost.to_string(), name.to_string());
        let mut running = self.running.lock();
        let Some(old) = running.remove(&key) else {
            return false;
        };
        let value = old.value.clone();
        drop(old.stop());
        running.insert(key, self.spawn(vhost, name, &value));
        true
    }

    async fn stop_all(&self) {
        let all = std::mem::take(&mut *self.running.lock());
        let tasks: Vec<_> = all.into_values().filter_map(Running::stop).collect();
        let _ = tokio::time::timeout(STOP_GRACE, async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
    }
}

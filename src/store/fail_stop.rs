//! What the store does when a write or fsync fails: it stops writing
//! messages (fail-stop) instead of logging and going on.
//!
//! The disk alarm goes on, which blocks publishers; the confirms the
//! failed writes covered are nacked; and the messages that did not reach
//! the disk leave their queues, so a nacked message is never delivered and
//! a queue never counts a message it cannot deliver. Acknowledgements go
//! on being written (they overwrite a byte in place and need no new
//! space), so consumers drain. Writes resume once free space is back
//! above the limit.

use super::disk_alarm::DiskAlarm;
use super::QueueEvents;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// A queue entry that did not reach the disk: (queue id, seq, body bytes,
/// message id).
pub(crate) type Unwritten = (u32, u64, u64, u64);

pub(crate) struct FailStop {
    pub(crate) alarm: Arc<DiskAlarm>,
    /// Durable queues by store id, to take unwritten messages out of them.
    queues: parking_lot::Mutex<HashMap<u32, Weak<dyn QueueEvents>>>,
}

impl FailStop {
    /// For the store in `dir`, its disk_free_limit from `config`.
    pub(crate) fn for_dir(
        dir: &std::path::Path,
        config: &crate::config::StorageConfig,
    ) -> FailStop {
        let limit = config
            .disk_free_limit
            .bytes(super::disk_alarm::total_memory());
        FailStop {
            alarm: Arc::new(DiskAlarm::new(dir, limit)),
            queues: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn register(&self, queue_id: u32, queue: Weak<dyn QueueEvents>) {
        let mut queues = self.queues.lock();
        queues.retain(|_, q| q.strong_count() > 0);
        queues.insert(queue_id, queue);
    }

    /// Takes messages that were not written out of their queues.
    pub(crate) fn forget(&self, mut unwritten: Vec<Unwritten>) {
        if unwritten.is_empty() {
            return;
        }
        unwritten.sort_unstable();
        unwritten.dedup_by_key(|(queue_id, seq, _, _)| (*queue_id, *seq));
        for run in unwritten.chunk_by(|a, b| a.0 == b.0) {
            let queue = self.queues.lock().get(&run[0].0).and_then(Weak::upgrade);
            if let Some(queue) = queue {
                queue.forget_unwritten(run);
            }
        }
    }
}

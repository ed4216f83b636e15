//! Where the group started reading a partition it had no commit for: the
//! point before which it can never deliver anything, which a backfill of
//! older events must reach (`crate::backfill`). Recorded in `STATE_TOPIC`
//! when the partition is placed (the time), then with the first message
//! read (its offset and Kafka timestamp).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::kafka::state::{StateTopic, StreamStart};
use crate::topic_partition::TopicPartition;

pub(super) struct FirstReads {
    state: Option<StateTopic>,
    /// Placed without a commit, first message not read yet: when it was placed.
    pending: Mutex<HashMap<TopicPartition, i64>>,
    /// `pending` is not empty: the consumer loop checks this per message.
    any: AtomicBool,
}

impl FirstReads {
    pub(super) fn new(state: Option<StateTopic>) -> Self {
        FirstReads {
            state,
            pending: Mutex::default(),
            any: AtomicBool::new(false),
        }
    }

    /// `tp` was placed with no commit of the group's (its earliest offset,
    /// or `START_AT`).
    pub(super) fn placed(&self, runtime: &tokio::runtime::Handle, tp: &TopicPartition) {
        let Some(state) = &self.state else { return };
        let now = chrono::Utc::now().timestamp_millis();
        state.record_stream_start(runtime, start(tp, now, None));
        self.pending
            .lock()
            .expect("first reads lock")
            .insert(tp.clone(), now);
        self.any.store(true, Ordering::Release);
    }

    /// A message of `tp` was read: the first one, if `tp` is pending.
    pub(super) fn read(
        &self,
        runtime: &tokio::runtime::Handle,
        tp: &TopicPartition,
        offset: i64,
        timestamp_ms: Option<i64>,
    ) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut pending = self.pending.lock().expect("first reads lock");
        let Some(placed_at_ms) = pending.remove(tp) else {
            return;
        };
        self.any.store(!pending.is_empty(), Ordering::Release);
        drop(pending);
        if let Some(state) = &self.state {
            state.record_stream_start(
                runtime,
                start(tp, placed_at_ms, Some((offset, timestamp_ms))),
            );
        }
    }
}

fn start(tp: &TopicPartition, placed_at_ms: i64, first: Option<(i64, Option<i64>)>) -> StreamStart {
    StreamStart {
        topic: tp.topic().to_owned(),
        partition: tp.partition,
        placed_at_ms,
        first_offset: first.map(|(offset, _)| offset),
        first_timestamp_ms: first.and_then(|(_, ts)| ts),
    }
}

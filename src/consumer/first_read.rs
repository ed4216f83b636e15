//! Where the group started reading a partition it had no commit for: the
//! point before which it can never deliver anything, which a backfill of
//! older events must reach (`crate::backfill`). Recorded in `STATE_TOPIC`
//! when the partition is placed (the time), then with the first message
//! read (its offset and Kafka timestamp). Each placement is a record of its
//! own, keyed by its time, so a late or repeated write never replaces a
//! later placement's record.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::kafka::state::StreamStart;
use crate::topic_partition::TopicPartition;

#[derive(Default)]
pub(super) struct FirstReads {
    /// Placed without a commit, first message not read yet: when it was placed.
    pending: Mutex<HashMap<TopicPartition, i64>>,
    /// `pending` is not empty: the consumer loop checks this per message.
    any: AtomicBool,
}

impl FirstReads {
    /// `tp` was placed at `now_ms` with no commit of the group's (at its
    /// earliest offset, or at `START_AT`): the record to write.
    pub(super) fn placed(&self, tp: &TopicPartition, now_ms: i64) -> StreamStart {
        let mut pending = self.pending.lock().expect("first reads lock");
        pending.insert(tp.clone(), now_ms);
        self.any.store(true, Ordering::Release);
        start(tp, now_ms, None)
    }

    /// A message of `tp` was read: the record to write if it is the first
    /// since `tp` was placed without a commit.
    pub(super) fn read(
        &self,
        tp: &TopicPartition,
        offset: i64,
        timestamp_ms: Option<i64>,
    ) -> Option<StreamStart> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut pending = self.pending.lock().expect("first reads lock");
        let placed_at_ms = pending.remove(tp)?;
        self.any.store(!pending.is_empty(), Ordering::Release);
        Some(start(tp, placed_at_ms, Some((offset, timestamp_ms))))
    }

    /// `tp` was revoked or lost: a later assignment places it anew.
    pub(super) fn forget(&self, tp: &TopicPartition) {
        let mut pending = self.pending.lock().expect("first reads lock");
        if pending.remove(tp).is_some() {
            self.any.store(!pending.is_empty(), Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("events", p)
    }

    #[test]
    fn the_first_message_after_a_placement_completes_its_record_once() {
        let reads = FirstReads::default();
        let placed = reads.placed(&tp(0), 1_000);
        assert_eq!((placed.placed_at_ms, placed.first_offset), (1_000, None));
        assert_eq!(reads.read(&tp(1), 5, Some(9)), None, "another partition");
        let first = reads.read(&tp(0), 42, Some(900)).expect("the first read");
        assert_eq!(
            (
                first.placed_at_ms,
                first.first_offset,
                first.first_timestamp_ms
            ),
            (1_000, Some(42), Some(900))
        );
        assert_eq!(reads.read(&tp(0), 43, Some(901)), None, "only the first");
    }

    #[test]
    fn a_partition_revoked_before_its_first_message_is_not_recorded_later_with_its_old_placement() {
        // Placed without a commit, revoked before any message; given back
        // later with a commit (another replica started and committed it):
        // its messages are not a first read, and above all not one with the
        // old placement time, which would move the hand-over back.
        let reads = FirstReads::default();
        reads.placed(&tp(0), 1_000);
        reads.forget(&tp(0));
        assert_eq!(reads.read(&tp(0), 7_000, Some(5_000)), None);
        assert!(!reads.any.load(Ordering::Acquire));
    }
}

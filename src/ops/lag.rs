//! Consumer lag, computed inside the consumer where it can be exact.
//!
//! Messages: high watermark minus committed offset, from one librdkafka
//! statistics snapshot (so the two are read together), clamped at 0. A
//! partition with no commit yet counts from its low watermark (new groups
//! start at the earliest offset) and is flagged by its own gauge. librdkafka
//! learns the high watermark from fetch responses, so it goes stale while a
//! partition is paused; `kafka::watermarks` then asks the broker, and the
//! higher of the two counts.
//!
//! Seconds: now minus the Kafka timestamp of the oldest consumed-but-undelivered
//! event. When nothing consumed is pending but unconsumed messages exist
//! (the high watermark is past what the worker has taken: fetching paused, or
//! not fetched yet), the estimate is the time since the partition was last
//! caught up: every unconsumed message is younger than that. 0 when every
//! message up to the high watermark was taken and delivered, even if the
//! commit of those offsets is still a few seconds away. Pure: the caller
//! passes `now`.

use std::collections::HashMap;

use crate::ops::stall::{Activity, StallClock};
use crate::ops::stats::PartitionStats;
use crate::topic_partition::TopicPartition;

/// The lag of one partition at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagView {
    pub high_watermark: i64,
    pub committed: Option<i64>,
    pub lag_messages: i64,
    pub lag_seconds: f64,
}

#[derive(Debug, Default)]
struct PartitionLag {
    /// Highest offset a commit callback confirmed.
    committed: Option<i64>,
    /// When the partition was last seen with nothing left to deliver (ms).
    caught_up_at_ms: Option<i64>,
    /// The high watermark last asked of the broker (`kafka::watermarks`):
    /// librdkafka learns it from fetch responses, so its own goes stale
    /// while a partition does not fetch (paused, or stuck).
    probed_high: Option<i64>,
    /// The committed offset in the last statistics.
    stats_committed: Option<i64>,
    /// The last offset stored for commit (see [`LagTracker::stored`]).
    stored: Option<i64>,
    stall: StallClock,
}

/// What the partition's worker reports, for the lag and stall views.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerView {
    /// Kafka timestamp of the oldest taken but undelivered event.
    pub oldest_pending_ts_ms: Option<i64>,
    /// One past the last offset the worker took.
    pub consumed_next: Option<i64>,
    /// Deliveries and dead letters acknowledged so far.
    pub completions: u64,
    /// Waiting for a known reason (see [`crate::ops::stall::Activity::waiting`]).
    pub waiting: bool,
}

#[derive(Debug, Default)]
pub struct LagTracker {
    partitions: HashMap<TopicPartition, PartitionLag>,
}

impl LagTracker {
    /// Records a confirmed commit; returns true if it moved the offset.
    pub fn committed(&mut self, tp: &TopicPartition, offset: i64) -> bool {
        let p = self.partitions.entry(tp.clone()).or_default();
        if p.committed.is_some_and(|c| c >= offset) {
            return false;
        }
        p.committed = Some(offset);
        true
    }

    /// Records the offset stored for commit. Returns true when it is below
    /// the committed offset: the partition's log started again (topic
    /// recreated or truncated; `Frontier::rewind`). librdkafka's auto-commit
    /// only commits offsets past the committed one, so the caller commits it
    /// explicitly, and the old commit is forgotten so it does not hide the
    /// new lag (commits only move forward otherwise).
    pub fn stored(&mut self, tp: &TopicPartition, next_offset: i64) -> bool {
        let p = self.partitions.entry(tp.clone()).or_default();
        p.stored = Some(next_offset);
        let known = p.committed.max(p.stats_committed);
        if known.is_some_and(|c| c > next_offset) {
            p.committed = None;
            p.stats_committed = None;
            return true;
        }
        false
    }

    /// Partitions whose committed offset (per the statistics) is above the
    /// offset last stored: an explicit commit of the stored one is due (the
    /// statistics may only show the old commit after the report came).
    pub fn commits_behind(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .iter()
            .filter_map(|(tp, p)| match (p.stored, p.stats_committed) {
                (Some(stored), Some(committed)) if committed > stored => Some((tp.clone(), stored)),
                _ => None,
            })
            .collect()
    }

    /// Drops what is known of a partition this replica no longer owns.
    pub fn forget(&mut self, tp: &TopicPartition) {
        self.partitions.remove(tp);
    }

    /// Records a high watermark just read from the broker. It replaces the
    /// previous probe (a recreated topic starts again from 0); librdkafka's
    /// statistics still win when they are fresher and higher.
    pub fn probed_high(&mut self, tp: &TopicPartition, high_watermark: i64) {
        self.partitions.entry(tp.clone()).or_default().probed_high = Some(high_watermark);
    }

    /// The lag of `tp` now, and how long it has been stalled if it is
    /// (`ops::stall`): it has work, is not waiting for a known reason, and
    /// neither takes nor delivers anything.
    pub fn observe_worker(
        &mut self,
        tp: &TopicPartition,
        stats: &PartitionStats,
        worker: &WorkerView,
        now_ms: i64,
    ) -> (LagView, Option<std::time::Duration>) {
        // Where this replica has read up to: what the worker took, or what
        // librdkafka fetched (past transaction markers, which no worker sees).
        let read_to = match (worker.consumed_next, stats.next_offset) {
            (Some(c), n) if n >= 0 => Some(c.max(n)),
            (c, n) if n >= 0 => c.or(Some(n)),
            (c, _) => c,
        };
        let view = self.observe(tp, stats, worker.oldest_pending_ts_ms, read_to, now_ms);
        let base = view
            .committed
            .unwrap_or(stats.lo_offset)
            .max(stats.lo_offset.max(0));
        let position = read_to.unwrap_or(base).max(base);
        let p = self.partitions.entry(tp.clone()).or_default();
        // What can be read: up to the last stable offset when librdkafka
        // reports one (an open transaction is not work the connector can
        // do), else the high watermark. The probe reads the same bound (its
        // client shares `isolation.level`), and stays fresh while the
        // statistics freeze.
        let readable = if stats.ls_offset >= 0 {
            stats.ls_offset.max(p.probed_high.unwrap_or(0))
        } else {
            view.high_watermark
        };
        let activity = Activity {
            has_work: readable > position || worker.oldest_pending_ts_ms.is_some(),
            progress: worker.consumed_next.unwrap_or(-1) + worker.completions as i64,
            waiting: worker.waiting || stats.waits_on_kafka(),
        };
        (view, p.stall.observe(activity, now_ms))
    }

    pub fn observe(
        &mut self,
        tp: &TopicPartition,
        stats: &PartitionStats,
        oldest_pending_ts_ms: Option<i64>,
        consumed_next: Option<i64>,
        now_ms: i64,
    ) -> LagView {
        let p = self.partitions.entry(tp.clone()).or_default();
        let from_stats = (stats.committed_offset >= 0).then_some(stats.committed_offset);
        p.stats_committed = from_stats;
        let committed = match (p.committed, from_stats) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let high_watermark = stats.hi_offset.max(p.probed_high.unwrap_or(0)).max(0);
        let low_watermark = stats.lo_offset.max(0);
        // Messages below the low watermark were deleted by retention or
        // compaction; they can no longer be delivered, so they are not lag.
        let base = committed.unwrap_or(low_watermark).max(low_watermark);
        let lag_messages = (high_watermark - base).max(0);
        // Messages the worker has not taken yet; the commit trails deliveries
        // by up to COMMIT_INTERVAL_MS, so it cannot tell this.
        let unconsumed = high_watermark > consumed_next.unwrap_or(base).max(base);
        let lag_seconds = match oldest_pending_ts_ms {
            Some(ts) => (now_ms - ts).max(0) as f64 / 1000.0,
            None if !unconsumed => {
                p.caught_up_at_ms = Some(now_ms);
                0.0
            }
            None => {
                let since = *p.caught_up_at_ms.get_or_insert(now_ms);
                (now_ms - since).max(0) as f64 / 1000.0
            }
        };
        LagView {
            high_watermark,
            committed,
            lag_messages,
            lag_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::stats::FetchState;

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new("t", partition)
    }

    use crate::ops::stats::test_stats as stats;

    #[test]
    fn lag_is_high_watermark_minus_committed() {
        let mut t = LagTracker::default();
        let v = t.observe(&tp(0), &stats(100, 0, 60), None, None, 0);
        assert_eq!(v.lag_messages, 40);
        assert_eq!(v.committed, Some(60));
    }

    #[test]
    fn lag_never_goes_negative_when_a_commit_is_ahead_of_a_stale_watermark() {
        let mut t = LagTracker::default();
        t.committed(&tp(0), 120);
        let v = t.observe(&tp(0), &stats(100, 0, 90), None, None, 0);
        assert_eq!(v.committed, Some(120));
        assert_eq!(v.lag_messages, 0);
    }

    #[test]
    fn no_commit_counts_from_the_low_watermark() {
        let mut t = LagTracker::default();
        let v = t.observe(&tp(3), &stats(50, 10, -1001), None, None, 0);
        assert_eq!(v.committed, None);
        assert_eq!(v.lag_messages, 40);
    }

    #[test]
    fn an_empty_partition_has_no_lag() {
        let mut t = LagTracker::default();
        let v = t.observe(&tp(0), &stats(0, 0, -1001), None, None, 0);
        assert_eq!((v.lag_messages, v.lag_seconds, v.committed), (0, 0.0, None));
    }

    #[test]
    fn offsets_deleted_by_retention_are_not_lag() {
        let mut t = LagTracker::default();
        // Committed at 10, but retention deleted everything below 40.
        let v = t.observe(&tp(0), &stats(100, 40, 10), None, None, 0);
        assert_eq!(v.lag_messages, 60);
        assert_eq!(v.committed, Some(10));
    }

    #[test]
    fn unknown_watermarks_read_as_zero_lag_not_negative() {
        let mut t = LagTracker::default();
        let v = t.observe(&tp(0), &stats(-1, -1, 5), None, None, 0);
        assert_eq!(v.lag_messages, 0);
    }

    #[test]
    fn lag_seconds_is_the_age_of_the_oldest_pending_event() {
        let mut t = LagTracker::default();
        let v = t.observe(&tp(0), &stats(10, 0, 5), Some(1_000), None, 4_500);
        assert_eq!(v.lag_seconds, 3.5);
    }

    #[test]
    fn lag_seconds_is_zero_when_caught_up_and_grows_while_unconsumed_messages_wait() {
        let mut t = LagTracker::default();
        assert_eq!(
            t.observe(&tp(0), &stats(10, 0, 10), None, None, 1_000)
                .lag_seconds,
            0.0
        );
        // New messages arrived but are not consumed yet (e.g. paused).
        assert_eq!(
            t.observe(&tp(0), &stats(15, 0, 10), None, None, 3_000)
                .lag_seconds,
            2.0
        );
        assert_eq!(
            t.observe(&tp(0), &stats(15, 0, 10), None, None, 6_000)
                .lag_seconds,
            5.0
        );
    }

    #[test]
    fn delivered_but_not_yet_committed_is_not_time_lag() {
        let mut t = LagTracker::default();
        // Steady traffic: the commit always trails the high watermark, but the
        // worker has taken everything up to it and delivered it.
        for (now, hi) in [(1_000, 100), (60_000, 500), (400_000, 9_000)] {
            let v = t.observe(&tp(0), &stats(hi, 0, hi - 50), None, Some(hi), now);
            assert_eq!(v.lag_seconds, 0.0, "at {now} ms");
            assert_eq!(v.lag_messages, 50);
        }
        // Then the worker falls behind the high watermark with nothing pending.
        let v = t.observe(&tp(0), &stats(9_100, 0, 9_000), None, Some(9_000), 403_000);
        assert_eq!(v.lag_seconds, 3.0);
    }

    #[test]
    fn a_probed_high_watermark_counts_while_statistics_are_stale() {
        let mut t = LagTracker::default();
        t.committed(&tp(0), 100);
        // Paused at 120: the statistics keep saying 120, the broker says 500.
        t.probed_high(&tp(0), 500);
        let v = t.observe(&tp(0), &stats(120, 0, 100), None, Some(120), 0);
        assert_eq!((v.high_watermark, v.lag_messages), (500, 400));
        // The unconsumed messages age while the partition waits.
        let later = t.observe(&tp(0), &stats(120, 0, 100), None, Some(120), 7_000);
        assert_eq!(later.lag_seconds, 7.0);
        // Fresher statistics win.
        assert_eq!(
            t.observe(&tp(0), &stats(600, 0, 100), None, Some(120), 0)
                .high_watermark,
            600
        );
        // A new probe replaces the last one (the topic was recreated).
        t.probed_high(&tp(0), 30);
        assert_eq!(
            t.observe(&tp(0), &stats(20, 0, 10), None, Some(20), 0)
                .high_watermark,
            30
        );
    }

    fn worker(consumed_next: Option<i64>, completions: u64, waiting: bool) -> WorkerView {
        WorkerView {
            oldest_pending_ts_ms: None,
            consumed_next,
            completions,
            waiting,
        }
    }

    #[test]
    fn a_partition_that_stops_fetching_with_unread_messages_is_stalled_after_30_s() {
        let mut t = LagTracker::default();
        t.committed(&tp(0), 100);
        // Paused inside librdkafka without the connector knowing: the
        // statistics froze at 120, the probe says 500, nothing moves.
        t.probed_high(&tp(0), 500);
        let mut s = stats(120, 0, 100);
        s.next_offset = 120;
        let w = worker(Some(120), 7, false);
        assert_eq!(t.observe_worker(&tp(0), &s, &w, 0).1, None);
        assert_eq!(t.observe_worker(&tp(0), &s, &w, 29_000).1, None);
        let (view, stalled) = t.observe_worker(&tp(0), &s, &w, 31_000);
        assert_eq!(view.lag_messages, 400);
        assert_eq!(stalled, Some(std::time::Duration::from_secs(31)));
    }

    #[test]
    fn a_partition_paused_or_delivering_or_read_to_the_end_is_not_stalled() {
        let mut t = LagTracker::default();
        t.committed(&tp(0), 100);
        t.probed_high(&tp(0), 500);
        let s = stats(120, 0, 100);
        for now in [0, 40_000, 80_000] {
            assert_eq!(
                t.observe_worker(&tp(0), &s, &worker(Some(120), 7, true), now)
                    .1,
                None
            );
        }
        // Everything fetched (the last offset is a transaction marker no
        // worker sees): nothing to do, however long it stays so.
        let mut t = LagTracker::default();
        t.committed(&tp(1), 99);
        let mut s = stats(100, 0, 99);
        s.next_offset = 100;
        for now in [0, 40_000, 80_000] {
            let (view, stalled) = t.observe_worker(&tp(1), &s, &worker(Some(99), 3, false), now);
            assert_eq!(stalled, None);
            assert_eq!(view.lag_seconds, 0.0, "read to the end, nothing waits");
        }
    }

    #[test]
    fn an_open_transaction_or_kafka_looking_up_the_start_or_no_leader_is_not_a_stall() {
        // read_committed: fetching stops at the last stable offset (100)
        // while a transaction keeps the high watermark at 200.
        let mut t = LagTracker::default();
        t.committed(&tp(0), 100);
        let mut s = stats(200, 0, 100);
        s.ls_offset = 100;
        s.next_offset = 100;
        for now in [0, 40_000, 80_000] {
            assert_eq!(
                t.observe_worker(&tp(0), &s, &worker(Some(100), 3, false), now)
                    .1,
                None
            );
        }
        // Kafka's side: the start offset is being looked up, or no leader.
        for (fetch_state, leader) in [
            (FetchState::OffsetQuery, 0),
            (FetchState::OffsetWait, 0),
            (FetchState::Active, -1),
        ] {
            let mut t = LagTracker::default();
            let mut s = stats(500, 0, -1001);
            s.fetch_state = fetch_state;
            s.leader = leader;
            for now in [0, 40_000, 80_000] {
                assert_eq!(
                    t.observe_worker(&tp(0), &s, &worker(None, 0, false), now).1,
                    None,
                    "{fetch_state:?} {leader}"
                );
            }
        }
    }

    #[test]
    fn an_offset_stored_below_the_commit_is_committed_explicitly_and_the_old_commit_forgotten() {
        let mut t = LagTracker::default();
        t.committed(&tp(0), 50);
        assert!(!t.stored(&tp(0), 60), "forward: auto-commit takes it");
        // The topic was recreated: offsets start again at 0.
        assert!(t.stored(&tp(0), 10));
        let v = t.observe(&tp(0), &stats(10, 0, -1001), None, Some(10), 0);
        assert_eq!((v.committed, v.lag_messages), (None, 10));
        // A partition assigned again after the recreation: the statistics
        // still show the old commit until the explicit one lands.
        let mut t = LagTracker::default();
        assert!(!t.stored(&tp(1), 10));
        t.observe(&tp(1), &stats(10, 0, 50), None, Some(10), 0);
        assert_eq!(t.commits_behind(), vec![(tp(1), 10)]);
        t.observe(&tp(1), &stats(10, 0, 10), None, Some(10), 0);
        assert_eq!(t.commits_behind(), vec![]);
    }

    #[test]
    fn commits_only_move_forward() {
        let mut t = LagTracker::default();
        assert!(t.committed(&tp(1), 10));
        assert!(!t.committed(&tp(1), 10));
        assert!(!t.committed(&tp(1), 5));
        assert!(t.committed(&tp(1), 11));
        t.forget(&tp(1));
        assert!(t.committed(&tp(1), 1));
    }
}

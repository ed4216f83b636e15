//! Stalls: an assigned partition that has messages to deliver but neither
//! takes nor delivers any, while nothing explains the wait.
//!
//! A partition may wait on purpose: a batch is being delivered or retried
//! (the webhook is slow or failing; the lag alerts cover that), it is paused
//! because its buffer is full, it is blocked by `DLQ_POLICY=block`, or its
//! dead-letter writes are failing. None of these is a stall. A partition that
//! has work, no such reason, and has not moved for [`STALL_AFTER`] is stuck
//! in a way the connector cannot explain (a lost resume, a worker that
//! stopped): `/healthz` fails and names it, so the orchestrator restarts the
//! replica, and the `partition_stalled` gauge and its alert say which one.
//! Pure: the caller passes what it observed and `now`.

use std::time::Duration;

/// How long a partition may have work and make no progress before it counts as stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// One observation of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// The partition has messages it has not taken, or taken ones not yet delivered.
    pub has_work: bool,
    /// A counter that moves whenever the partition takes or completes anything
    /// (next offset taken plus deliveries and dead letters acknowledged).
    pub progress: i64,
    /// The partition waits for a known reason (delivery in flight, paused
    /// for backpressure, blocked by policy, dead-letter writes failing).
    pub waiting: bool,
}

/// Tracks one partition across observations.
#[derive(Debug, Default, Clone)]
pub struct StallClock {
    last_progress: Option<i64>,
    /// When the partition last moved, waited for a reason, or had no work (ms).
    fine_at_ms: Option<i64>,
}

impl StallClock {
    /// Returns how long the partition has been stalled, if it is.
    pub fn observe(&mut self, activity: Activity, now_ms: i64) -> Option<Duration> {
        let moved = self.last_progress != Some(activity.progress);
        self.last_progress = Some(activity.progress);
        if moved || activity.waiting || !activity.has_work {
            self.fine_at_ms = Some(now_ms);
            return None;
        }
        let since = *self.fine_at_ms.get_or_insert(now_ms);
        let quiet = Duration::from_millis((now_ms - since).max(0) as u64);
        (quiet >= STALL_AFTER).then_some(quiet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(has_work: bool, progress: i64, waiting: bool) -> Activity {
        Activity {
            has_work,
            progress,
            waiting,
        }
    }

    #[test]
    fn a_partition_with_work_that_does_not_move_for_30_s_is_stalled() {
        let mut clock = StallClock::default();
        assert_eq!(clock.observe(activity(true, 5, false), 0), None);
        assert_eq!(clock.observe(activity(true, 5, false), 29_999), None);
        assert_eq!(
            clock.observe(activity(true, 5, false), 30_000),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            clock.observe(activity(true, 5, false), 45_000),
            Some(Duration::from_secs(45))
        );
    }

    #[test]
    fn progress_resets_the_clock() {
        let mut clock = StallClock::default();
        clock.observe(activity(true, 5, false), 0);
        assert_eq!(clock.observe(activity(true, 6, false), 29_000), None);
        assert_eq!(clock.observe(activity(true, 6, false), 58_000), None);
        assert!(clock.observe(activity(true, 6, false), 59_000).is_some());
    }

    #[test]
    fn waiting_on_the_webhook_or_backpressure_is_not_a_stall() {
        let mut clock = StallClock::default();
        for t in (0..120_000).step_by(1_000) {
            assert_eq!(clock.observe(activity(true, 5, true), t), None);
        }
        // The wait ended after 119 s and nothing moves: the clock runs from then.
        assert_eq!(clock.observe(activity(true, 5, false), 148_000), None);
        assert!(clock.observe(activity(true, 5, false), 149_000).is_some());
    }

    #[test]
    fn an_idle_partition_with_nothing_to_do_is_not_a_stall() {
        let mut clock = StallClock::default();
        for t in (0..120_000).step_by(1_000) {
            assert_eq!(clock.observe(activity(false, 5, false), t), None);
        }
    }

    #[test]
    fn a_stall_ends_as_soon_as_the_partition_moves() {
        let mut clock = StallClock::default();
        clock.observe(activity(true, 5, false), 0);
        assert!(clock.observe(activity(true, 5, false), 31_000).is_some());
        assert_eq!(clock.observe(activity(true, 9, false), 32_000), None);
    }
}

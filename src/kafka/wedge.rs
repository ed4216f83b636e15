//! A consumer that librdkafka has stopped from taking part in rebalances.
//!
//! librdkafka (2.12, cooperative protocol) can leave its group state stuck:
//! when the topic's metadata changes (partitions added) while the
//! application is in its revoke callback (this connector drains in-flight
//! batches there, for up to `SHUTDOWN_TIMEOUT_MS`), librdkafka rejoins the
//! group in the middle of the revocation and never clears the "incremental
//! assignment pending" mark the revocation set. From then on it skips every
//! rebalance the coordinator asks for: the partitions of replicas that
//! leave or die are never handed out again, and only a restart clears it.
//! Seen in the chaos test (`tests/chaos.rs`), with librdkafka's `cgrp` debug
//! lines saying, every heartbeat, "skipping COOPERATIVE rebalance ...
//! (incremental assignment pending)".
//!
//! The consumer therefore reads those lines (it runs with `debug=cgrp` and
//! drops the debug lines the operator did not ask for). A legitimate pending
//! assignment lasts as long as a revocation's drain; one that outlasts it by
//! [`WEDGED_AFTER`], with no rebalance callback meanwhile, is the stuck
//! state, and the consumer exits non-zero so the replica is restarted.
//! Pure: the caller passes the time.

use std::time::Duration;

/// How long past the longest revocation drain a skipped rebalance may go on.
pub const WEDGED_AFTER: Duration = Duration::from_secs(60);

/// Whether a librdkafka debug line says it skipped a rebalance the
/// coordinator asked for because an incremental assignment is pending.
pub fn is_skipped_rebalance(line: &str) -> bool {
    line.contains("skipping COOPERATIVE rebalance")
        && line.contains("incremental assignment pending")
}

/// Tracks skipped rebalances since the last rebalance callback.
#[derive(Debug, Default)]
pub struct WedgeWatch {
    first_skip_ms: Option<i64>,
    last_skip_ms: Option<i64>,
}

impl WedgeWatch {
    /// librdkafka skipped a rebalance (see [`is_skipped_rebalance`]).
    pub fn skipped(&mut self, now_ms: i64) {
        self.first_skip_ms.get_or_insert(now_ms);
        self.last_skip_ms = Some(now_ms);
    }

    /// A rebalance callback ran: the group state moves.
    pub fn rebalanced(&mut self) {
        *self = WedgeWatch::default();
    }

    /// How long rebalances have been skipped, when that is longer than the
    /// longest drain (`drain`) plus [`WEDGED_AFTER`] and still going on
    /// (a skip within the last 30 s: heartbeats are seconds apart).
    pub fn wedged(&self, now_ms: i64, drain: Duration) -> Option<Duration> {
        let (first, last) = (self.first_skip_ms?, self.last_skip_ms?);
        if now_ms - last > 30_000 {
            return None;
        }
        let skipping = Duration::from_millis((now_ms - first).max(0) as u64);
        (skipping > drain + WEDGED_AFTER).then_some(skipping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAIN: Duration = Duration::from_secs(20);

    #[test]
    fn the_line_librdkafka_writes_when_it_skips_a_rebalance_is_recognised() {
        assert!(is_skipped_rebalance(
            "[thrd:main]: Group \"g\": skipping COOPERATIVE rebalance in state up \
             (join-state steady) (incremental assignment pending)"
        ));
        assert!(!is_skipped_rebalance(
            "[thrd:main]: Group \"g\": skipping COOPERATIVE rebalance in state up \
             (join-state wait-assign-call) (awaiting assign call)"
        ));
        assert!(!is_skipped_rebalance(
            "Heartbeat for group \"g\" generation id 5"
        ));
    }

    #[test]
    fn skips_that_outlast_a_drain_by_a_minute_are_a_wedge() {
        let mut watch = WedgeWatch::default();
        for t in (0..=80_000).step_by(1_000) {
            watch.skipped(t);
            assert_eq!(watch.wedged(t, DRAIN), None, "at {t} ms");
        }
        watch.skipped(81_000);
        assert_eq!(watch.wedged(81_000, DRAIN), Some(Duration::from_secs(81)));
    }

    #[test]
    fn a_rebalance_callback_ends_the_watch() {
        let mut watch = WedgeWatch::default();
        for t in (0..=70_000).step_by(1_000) {
            watch.skipped(t);
        }
        watch.rebalanced();
        watch.skipped(71_000);
        assert_eq!(watch.wedged(100_000, DRAIN), None);
        assert_eq!(
            watch.wedged(71_000 + 81_000, DRAIN),
            None,
            "no skip for 80 s: not going on"
        );
    }

    #[test]
    fn skips_that_stopped_are_not_a_wedge() {
        let mut watch = WedgeWatch::default();
        for t in (0..=10_000).step_by(1_000) {
            watch.skipped(t);
        }
        assert_eq!(watch.wedged(120_000, DRAIN), None);
    }
}

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
//! drops the debug lines the operator did not ask for). librdkafka writes
//! them only in the stuck state: during a normal revocation it sends no
//! heartbeat, or answers "rebalance in progress" without this line. Once the
//! coordinator gives up on the member (after `max.poll.interval.ms`), the
//! line becomes "rebalance ... already in progress, skipping ... incremental
//! assignment in progress", matched too. Skips for [`WEDGED_AFTER`] with no
//! rebalance callback meanwhile are the stuck state, and the consumer exits
//! non-zero so the replica is restarted. Pure: the caller passes the time.

use std::time::Duration;

/// How long skipped rebalances go on before the consumer exits: several
/// heartbeats, so that one odd line does not restart a replica.
pub const WEDGED_AFTER: Duration = Duration::from_secs(30);

/// Whether a librdkafka debug line says it skipped a rebalance because an
/// incremental assignment is pending (while a member, or once expelled).
pub fn is_skipped_rebalance(line: &str) -> bool {
    (line.contains("skipping COOPERATIVE rebalance")
        && line.contains("incremental assignment pending"))
        || (line.contains("already in progress, skipping")
            && line.contains("incremental assignment in progress"))
}

/// Tracks skipped rebalances since the last rebalance callback.
#[derive(Debug, Default)]
pub struct WedgeWatch {
    first_skip_ms: Option<i64>,
}

impl WedgeWatch {
    /// librdkafka skipped a rebalance (see [`is_skipped_rebalance`]).
    pub fn skipped(&mut self, now_ms: i64) {
        self.first_skip_ms.get_or_insert(now_ms);
    }

    /// A rebalance callback ran: the group state moves.
    pub fn rebalanced(&mut self) {
        *self = WedgeWatch::default();
    }

    /// How long rebalances have been skipped, once that passes
    /// [`WEDGED_AFTER`] with no rebalance callback since the first skip (a
    /// silence after the skips is no recovery: the member may have been
    /// expelled and stopped heartbeating).
    pub fn wedged(&self, now_ms: i64) -> Option<Duration> {
        let first = self.first_skip_ms?;
        let skipping = Duration::from_millis((now_ms - first).max(0) as u64);
        (skipping >= WEDGED_AFTER).then_some(skipping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_librdkafka_writes_when_it_skips_a_rebalance_are_recognised() {
        assert!(is_skipped_rebalance(
            "[thrd:main]: Group \"g\": skipping COOPERATIVE rebalance in state up \
             (join-state steady) (incremental assignment pending)"
        ));
        assert!(is_skipped_rebalance(
            "[thrd:main]: Group \"g\": rebalance (COOPERATIVE) already in progress, skipping in \
             state up (join-state steady) with 4 assigned partition(s), incremental assignment in \
             progress: resetting member-id"
        ));
        assert!(!is_skipped_rebalance(
            "[thrd:main]: Group \"g\": skipping COOPERATIVE rebalance in state up \
             (join-state wait-assign-call) (awaiting assign call)"
        ));
        assert!(!is_skipped_rebalance(
            "[thrd:main]: Group \"g\": rebalance (COOPERATIVE) already in progress, skipping in \
             state up (join-state wait-join) with 4 assigned partition(s): Metadata changed"
        ));
        assert!(!is_skipped_rebalance(
            "Heartbeat for group \"g\" generation id 5"
        ));
    }

    #[test]
    fn skips_for_30_s_without_a_rebalance_callback_are_a_wedge() {
        let mut watch = WedgeWatch::default();
        for t in (0..30_000).step_by(1_000) {
            watch.skipped(t);
            assert_eq!(watch.wedged(t), None, "at {t} ms");
        }
        assert_eq!(watch.wedged(30_000), Some(Duration::from_secs(30)));
    }

    #[test]
    fn skips_that_fall_silent_without_a_rebalance_are_still_a_wedge() {
        // Expelled by the coordinator, the member may stop heartbeating.
        let mut watch = WedgeWatch::default();
        for t in (0..10_000).step_by(1_000) {
            watch.skipped(t);
        }
        assert_eq!(watch.wedged(120_000), Some(Duration::from_secs(120)));
    }

    #[test]
    fn a_rebalance_callback_ends_the_watch() {
        let mut watch = WedgeWatch::default();
        for t in (0..=20_000).step_by(1_000) {
            watch.skipped(t);
        }
        watch.rebalanced();
        assert_eq!(watch.wedged(100_000), None);
        watch.skipped(101_000);
        assert_eq!(watch.wedged(130_000), None);
        assert!(watch.wedged(131_000).is_some());
    }
}

//! What `/healthz` and `/readyz` report. The consumer loop beats a heartbeat
//! every poll; a loop that stops beating (a stuck poll, a deadlock) makes the
//! process unhealthy even though it still answers HTTP.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The consumer loop polls at least every 100 ms; this much silence means it is stuck.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Health {
    /// Unix ms of the consumer loop's last iteration; 0 before it starts.
    consumer_heartbeat_ms: AtomicU64,
    /// Set by the first rebalance callback, cleared when the group membership is lost.
    joined_group: AtomicBool,
    /// From librdkafka's statistics: at least one broker connection is up.
    broker_up: AtomicBool,
    /// Set once shutdown begins: not ready, but still healthy.
    shutting_down: AtomicBool,
    /// Partition workers whose loop stopped turning (see `partition::Shared`).
    stalled_workers: AtomicUsize,
    /// Partitions in trouble, named, as the consumer loop last saw them.
    partitions: Mutex<PartitionProblems>,
}

/// Partitions that need attention, each as `topic/partition` with a detail.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartitionProblems {
    /// Work and no progress for `stall::STALL_AFTER`, for no known reason:
    /// unhealthy (a restart is the remedy).
    pub stalled: Vec<String>,
    /// Stopped by `DLQ_POLICY=block` until the operator acts: healthy (a
    /// restart would stop at the same message), but said.
    pub blocked: Vec<String>,
    /// Dead-letter writes failing: healthy (a restart does not fix the topic
    /// or its ACLs), but said.
    pub dead_letter_failing: Vec<String>,
}

impl PartitionProblems {
    fn notes(&self) -> String {
        let mut notes = String::new();
        if !self.blocked.is_empty() {
            notes.push_str(&format!(
                "; blocked by DLQ_POLICY=block: {}",
                self.blocked.join(", ")
            ));
        }
        if !self.dead_letter_failing.is_empty() {
            notes.push_str(&format!(
                "; dead-letter writes failing (not taking messages): {}",
                self.dead_letter_failing.join(", ")
            ));
        }
        notes
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn beat(&self, now: SystemTime) {
        self.consumer_heartbeat_ms
            .store(unix_ms(now), Ordering::Relaxed);
    }
    pub fn set_joined(&self, joined: bool) {
        self.joined_group.store(joined, Ordering::Relaxed);
    }
    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
    }
    pub fn set_stalled_workers(&self, n: usize) {
        self.stalled_workers.store(n, Ordering::Relaxed);
    }
    pub fn set_partition_problems(&self, problems: PartitionProblems) {
        *self.problems() = problems;
    }
    fn problems(&self) -> std::sync::MutexGuard<'_, PartitionProblems> {
        self.partitions
            .lock()
            .expect("no code panics while holding the health lock")
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// `Ok(reason)` when alive and progressing, `Err(reason)` otherwise.
    pub fn liveness(&self, now: SystemTime) -> Result<String, String> {
        let beat = self.consumer_heartbeat_ms.load(Ordering::Relaxed);
        if beat == 0 {
            return Ok("starting: the consumer loop has not run yet".into());
        }
        let silent = Duration::from_millis(unix_ms(now).saturating_sub(beat));
        let stalled = self.stalled_workers.load(Ordering::Relaxed);
        let problems = self.problems().clone();
        if silent > STALL_AFTER {
            Err(format!(
                "the consumer loop has not made progress for {} s",
                silent.as_secs()
            ))
        } else if stalled > 0 {
            Err(format!(
                "{stalled} partition worker(s) have not made progress for {} s",
                STALL_AFTER.as_secs()
            ))
        } else if !problems.stalled.is_empty() {
            Err(format!(
                "stalled: partition(s) with lag that neither fetched nor delivered for {} s or more, for no known reason: {}{}",
                crate::ops::stall::STALL_AFTER.as_secs(),
                problems.stalled.join(", "),
                problems.notes()
            ))
        } else {
            Ok(format!(
                "ok: consumer loop active {} ms ago{}",
                silent.as_millis(),
                problems.notes()
            ))
        }
    }

    /// `Ok` when joined to the group with a reachable broker.
    pub fn readiness(&self) -> Result<String, String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        match (
            self.joined_group.load(Ordering::Relaxed),
            self.broker_up.load(Ordering::Relaxed),
        ) {
            (true, true) => Ok("ok: member of the consumer group, broker reachable".into()),
            (false, _) => Err("not (yet) a member of the consumer group".into()),
            (true, false) => Err("no Kafka broker reachable".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_consumer_loop_is_unhealthy() {
        let h = Health::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(h.liveness(t0).is_ok(), "starting is healthy");
        h.beat(t0);
        assert!(h.liveness(t0 + Duration::from_secs(1)).is_ok());
        let err = h.liveness(t0 + Duration::from_secs(31)).unwrap_err();
        assert!(err.contains("31 s"), "{err}");
    }

    #[test]
    fn a_stalled_partition_worker_is_unhealthy() {
        let h = Health::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        h.beat(t0);
        h.set_stalled_workers(1);
        assert!(h.liveness(t0).unwrap_err().contains("partition worker"));
        h.set_stalled_workers(0);
        assert!(h.liveness(t0).is_ok());
    }

    #[test]
    fn a_stalled_partition_is_unhealthy_and_named_while_blocked_ones_are_only_reported() {
        let h = Health::default();
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        h.beat(t0);
        h.set_partition_problems(PartitionProblems {
            blocked: vec!["events/2 at offset 17".into()],
            dead_letter_failing: vec!["events/4".into()],
            ..Default::default()
        });
        let ok = h.liveness(t0).expect("blocked is not unhealthy");
        assert!(ok.contains("events/2 at offset 17"), "{ok}");
        assert!(ok.contains("dead-letter writes failing"), "{ok}");
        h.set_partition_problems(PartitionProblems {
            stalled: vec!["events/3 (45 s)".into()],
            ..Default::default()
        });
        let err = h.liveness(t0).unwrap_err();
        assert!(err.contains("events/3 (45 s)"), "{err}");
        h.set_partition_problems(PartitionProblems::default());
        assert!(h.liveness(t0).is_ok());
    }

    #[test]
    fn ready_needs_group_membership_and_a_broker() {
        let h = Health::default();
        assert!(h.readiness().is_err());
        h.set_joined(true);
        assert!(h.readiness().unwrap_err().contains("broker"));
        h.set_broker_up(true);
        assert!(h.readiness().is_ok());
        h.set_shutting_down();
        assert!(h.readiness().is_err());
    }
}

//! Rebalances: librdkafka's callbacks for assign, revoke and lost, run on the
//! consumer thread; a revocation drains the revoked partitions' workers and
//! commits what they delivered before it returns.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{error, info, warn};

use super::{unix_now, Consumer_, Context};
use crate::ops::log_limit;
use crate::partition;
use crate::topic_partition::TopicPartition;

use crate::partition::state::Lanes;

impl ConsumerContext for Context {
    /// librdkafka's rebalance flow (as rdkafka's default), plus START_AT.
    fn rebalance(
        &self,
        consumer: &Consumer_,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::consumer::RebalanceProtocol;
        use rdkafka::types::RDKafkaRespErr as Err;
        self.wedge.lock().expect("wedge lock").rebalanced();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            Err::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // While shutting down, no worker starts for these partitions
                // (`assign`): reading their start positions would only spend
                // the shutdown's time (librdkafka answers reads slowly while
                // closing).
                let starts = if self.health.is_shutting_down() {
                    None
                } else {
                    let starts = self.resolve_start(consumer, tpl);
                    self.place_from_commits(consumer, tpl);
                    starts
                };
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                match result {
                    Ok(()) => {
                        // librdkafka keeps a partition's pause flag across
                        // unassign and assign: a partition this replica paused
                        // before it moved away would come back paused, and its
                        // new worker (which starts unpaused) would never see
                        // a message. Every assigned partition starts fetching.
                        if let Err(e) = consumer.resume(tpl) {
                            error!(error = %e, "resuming newly assigned partitions failed");
                        }
                        if let Some(starts) = starts {
                            self.commit_sync_tpl(consumer, &starts, "START_AT");
                        }
                        self.post_rebalance(consumer, &Rebalance::Assign(tpl));
                    }
                    // No workers for partitions librdkafka does not consider
                    // assigned: they would count in the buffer shares and
                    // the gauges, and never receive a message.
                    // The group counts them as this member's while nothing
                    // reads them: end the process so they move elsewhere.
                    Err(e) => self.set_fatal(format!(
                        "assigning partitions failed ({e}); no workers started for them"
                    )),
                }
                self.health.set_joined(true);
                self.ever_joined.store(true, Ordering::Relaxed);
            }
            Err::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.pre_rebalance(consumer, &Rebalance::Revoke(tpl));
                if let Err(e) = unassign(consumer, tpl, cooperative) {
                    error!(error = %e, "unassigning partitions failed");
                }
                self.post_rebalance(consumer, &Rebalance::Revoke(tpl));
            }
            other => {
                let error = KafkaError::Rebalance(other.into());
                self.pre_rebalance(consumer, &Rebalance::Error(error.clone()));
                if let Err(e) = unassign(consumer, tpl, cooperative) {
                    error!(error = %e, "unassigning after a rebalance error failed");
                }
                self.post_rebalance(consumer, &Rebalance::Error(error));
                self.health.set_joined(false);
            }
        }
    }

    fn pre_rebalance(&self, consumer: &Consumer_, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let kind = if consumer.assignment_lost() {
                    // Not a member until the next assignment.
                    self.health.set_joined(false);
                    "lost"
                } else {
                    "revoke"
                };
                self.metrics.rebalances.with_label_values(&[kind]).inc();
                self.revoke(consumer, tpl);
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                error!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &Consumer_, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.assign(tpl);
            }
            Rebalance::Revoke(_) if !consumer.assignment_lost() => self.health.set_joined(true),
            _ => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.commit_callbacks.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["ok"]).inc();
                let now = unix_now();
                // A commit of revoked partitions (the revocation's own) must
                // not bring back series this replica no longer owns.
                let workers = self.workers();
                let mut lag = self.lag.lock().expect("lag lock");
                for elem in offsets.elements() {
                    let tp = TopicPartition::new(elem.topic(), elem.partition());
                    if !workers.contains_key(&tp) {
                        continue;
                    }
                    if let Offset::Offset(offset) = elem.offset() {
                        if lag.committed(&tp, offset) {
                            let label = elem.partition().to_string();
                            self.metrics
                                .partition_last_commit
                                .with_label_values(&[elem.topic(), label.as_str()])
                                .set(now);
                        }
                    }
                }
            }
            // "No offset to commit" is the normal answer of an idle auto-commit.
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                self.metrics.commits.with_label_values(&["error"]).inc();
                let n = self.commit_failures.fetch_add(1, Ordering::Relaxed);
                if log_limit::worth_logging(n) {
                    warn!(error = %e, failures = n + 1, "offset commit failed; it is retried at the next commit (repeats are logged less often)");
                }
            }
        }
    }
}

impl Context {
    pub(super) fn assign(&self, tpl: &TopicPartitionList) {
        // Served while the shutdown waits for its commit: the consumer is
        // closing, so nothing is started for partitions given to it now.
        if self.health.is_shutting_down() {
            return;
        }
        let mut workers = self.workers();
        let mut added = Vec::new();
        // Each new worker learns its lanes from the partitions this replica
        // will own once the assignment is done.
        let owned = workers.len()
            + tpl
                .elements()
                .iter()
                .filter(|e| {
                    !workers.contains_key(&TopicPartition::new(
                        self.topic_name(e.topic()),
                        e.partition(),
                    ))
                })
                .count();
        let config = &self.deps.config;
        let lanes = Lanes::per_partition(
            config.ordering,
            config.key_lanes,
            config.max_concurrent_requests,
            owned,
        );
        for elem in tpl.elements() {
            let tp = TopicPartition::new(self.topic_name(elem.topic()), elem.partition());
            if workers.contains_key(&tp) {
                continue;
            }
            let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
            workers.insert(
                tp.clone(),
                partition::spawn(
                    &self.runtime,
                    self.deps.clone(),
                    tp.clone(),
                    generation,
                    lanes,
                ),
            );
            added.push(tp);
        }
        self.metrics.assigned_partitions.set(workers.len() as i64);
        // The stall alert measures time since the last commit or, for a
        // partition that just arrived, since its assignment.
        let now = unix_now();
        for tp in &added {
            let label = tp.partition.to_string();
            self.metrics
                .partition_last_commit
                .with_label_values(&[tp.topic(), label.as_str()])
                .set(now);
        }
        added.sort_unstable();
        if !added.is_empty() {
            info!(partitions = %list(&added), assigned = workers.len(), "partitions assigned");
        }
        if let Some(share) = too_small_share(
            config.max_buffered_bytes,
            workers.len(),
            config.batch.max_bytes,
        ) {
            warn!(
                share,
                assigned = workers.len(),
                max_buffered_bytes = config.max_buffered_bytes,
                batch_max_bytes = config.batch.max_bytes,
                "each partition's share of MAX_BUFFERED_BYTES holds fewer than 3 batches; \
                 partitions will pause often and drain backlogs slowly \
                 (raise MAX_BUFFERED_BYTES, lower BATCH_MAX_BYTES, or add replicas)"
            );
        }
    }

    /// Drains the revoked partitions' workers and commits what they delivered.
    pub(super) fn revoke(&self, consumer: &Consumer_, tpl: &TopicPartitionList) {
        let lost = consumer.assignment_lost();
        let removed: Vec<(TopicPartition, partition::Handle)> = {
            let mut workers = self.workers();
            let removed = tpl
                .elements()
                .iter()
                .filter_map(|e| {
                    let tp = TopicPartition::new(e.topic(), e.partition());
                    self.first_reads.forget(&tp);
                    workers.remove(&tp).map(|h| (tp, h))
                })
                .collect();
            self.metrics.assigned_partitions.set(workers.len() as i64);
            removed
        };
        let mut partitions: Vec<TopicPartition> =
            removed.iter().map(|(tp, _)| tp.clone()).collect();
        if partitions.is_empty() {
            return;
        }
        partitions.sort_unstable();
        if lost {
            warn!(partitions = %list(&partitions), "partitions lost (group membership expired); abandoning their undelivered batches without committing");
            for (_, handle) in removed {
                handle.abort();
            }
        } else {
            info!(partitions = %list(&partitions), "partitions revoked; draining in-flight batches");
            let finals = self.stop_workers(removed, self.drain_timeout);
            self.commit_sync(consumer, &finals, "revoke");
        }
        let mut lag = self.lag.lock().expect("lag lock");
        for tp in partitions {
            lag.forget(&tp);
            self.metrics.forget_partition(tp.topic(), tp.partition);
        }
    }

    /// Stops workers, waiting up to `timeout`; returns each one's final safe offset.
    pub(super) fn stop_workers(
        &self,
        workers: Vec<(TopicPartition, partition::Handle)>,
        timeout: Duration,
    ) -> Vec<(TopicPartition, i64)> {
        let deadline = drain_deadline(
            tokio::time::Instant::now(),
            timeout,
            self.shutdown_deadline.get().copied(),
        );
        let stops: Vec<_> = workers
            .into_iter()
            .map(|(p, h)| {
                let stop = h.stop(deadline);
                async move { (p, stop.await) }
            })
            .collect();
        let results = self.runtime.block_on(async move {
            let mut results = Vec::with_capacity(stops.len());
            let handles: Vec<_> = stops.into_iter().map(tokio::spawn).collect();
            for handle in handles {
                if let Ok(result) = handle.await {
                    results.push(result);
                }
            }
            results
        });
        results
            .into_iter()
            .filter_map(|(p, offset)| offset.map(|o| (p, o)))
            .collect()
    }
}

/// Topic-partitions for a log line: `topic/0, topic/1, other/3`.
pub(super) fn list(partitions: &[TopicPartition]) -> String {
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives up `tpl` (cooperative protocol) or the whole assignment (eager).
pub(super) fn unassign(
    consumer: &Consumer_,
    tpl: &TopicPartitionList,
    cooperative: bool,
) -> KafkaResult<()> {
    if cooperative {
        consumer.incremental_unassign(tpl)
    } else {
        consumer.unassign()
    }
}

/// When a drain that starts at `now` must end: after `timeout`, but never
/// after the shutdown's deadline once SIGTERM has set one.
pub(super) fn drain_deadline(
    now: tokio::time::Instant,
    timeout: Duration,
    shutdown: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let own = now + timeout;
    shutdown.map_or(own, |s| own.min(s))
}

/// A partition's share of the buffer when it cannot hold the three batches
/// a busy partition needs (one in flight, one ready, one filling).
pub(super) fn too_small_share(
    max_buffered: usize,
    partitions: usize,
    batch_max_bytes: usize,
) -> Option<usize> {
    let share = max_buffered / partitions.max(1);
    (partitions > 0 && share < 3 * batch_max_bytes).then_some(share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_ends_by_its_timeout_or_the_shutdown_deadline_whichever_is_first() {
        let t0 = tokio::time::Instant::now();
        let timeout = Duration::from_secs(20);
        assert_eq!(drain_deadline(t0, timeout, None), t0 + timeout);
        // SIGTERM came 15 s into a revocation drain: the shutdown's drain
        // that follows ends 20 s after SIGTERM, not 20 s after it starts.
        let sigterm_deadline = t0 + Duration::from_secs(35);
        let later = t0 + Duration::from_secs(20);
        assert_eq!(
            drain_deadline(later, timeout, Some(sigterm_deadline)),
            sigterm_deadline
        );
        assert_eq!(
            drain_deadline(t0, timeout, Some(sigterm_deadline)),
            t0 + timeout
        );
    }

    #[test]
    fn a_share_must_hold_three_batches() {
        const MIB: usize = 1 << 20;
        // The defaults: 64 MiB over 12 partitions is 5.3 MiB each, enough for 1 MiB batches.
        assert_eq!(too_small_share(64 * MIB, 12, MIB), None);
        assert_eq!(too_small_share(64 * MIB, 21, MIB), None);
        assert_eq!(too_small_share(64 * MIB, 22, MIB), Some(64 * MIB / 22));
        assert_eq!(too_small_share(64 * MIB, 4, 32 * MIB), Some(16 * MIB));
        assert_eq!(too_small_share(64 * MIB, 0, MIB), None);
    }
}

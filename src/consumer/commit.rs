//! Offsets: storing what the workers delivered (auto-commit commits it), and
//! the synchronous commits of a revocation and a shutdown.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::rebalance::drain_deadline;
use super::{Consumer_, Context};
use crate::kafka::read;
use crate::partition::Progress;
use crate::topic_partition::TopicPartition;

impl Context {
    /// Stores and synchronously commits explicit offsets.
    pub(super) fn commit_sync(
        &self,
        consumer: &Consumer_,
        offsets: &[(TopicPartition, i64)],
        why: &str,
    ) {
        if offsets.is_empty() {
            return;
        }
        let tpl = offset_list(offsets);
        self.commit_sync_tpl(consumer, &tpl, why);
    }

    pub(super) fn commit_sync_tpl(
        &self,
        consumer: &Consumer_,
        tpl: &TopicPartitionList,
        why: &str,
    ) {
        // Storing too keeps the close-time auto-commit from committing anything older.
        if let Err(e) = consumer.store_offsets(tpl) {
            warn!(error = %e, why, "storing offsets failed");
        }
        // A coordinator that moves or loads (a broker restarting) answers
        // for a few seconds with errors worth retrying, and so does a stale
        // member epoch (new protocol); a new generation (IllegalGeneration,
        // classic) is final. Retries end by the shutdown deadline.
        let give_up = drain_deadline(
            tokio::time::Instant::now(),
            COMMIT_RETRY_FOR,
            self.shutdown_deadline.get().copied(),
        );
        let mut attempt = 0;
        loop {
            match consumer.commit(tpl, CommitMode::Sync) {
                Ok(()) => {
                    info!(why, offsets = ?tpl.to_topic_map(), attempts = attempt + 1, "committed offsets");
                    return;
                }
                Err(e)
                    if (read::is_transient(&e) || is_stale_epoch(&e))
                        && tokio::time::Instant::now() + COMMIT_RETRY_STEP < give_up =>
                {
                    warn!(why, error = %e, attempt = attempt + 1, "committing offsets failed; retrying");
                    std::thread::sleep(COMMIT_RETRY_STEP);
                    attempt += 1;
                }
                Err(e) => {
                    self.metrics.commits.with_label_values(&["error"]).inc();
                    error!(why, error = %e, "committing offsets failed; what they cover will be redelivered");
                    return;
                }
            }
        }
    }
}

/// Under the new group protocol (KIP-848) a commit sent while the member's
/// epoch moves on is refused as stale, and librdkafka does not retry a
/// manual commit: sent again, it carries the new epoch.
fn is_stale_epoch(error: &rdkafka::error::KafkaError) -> bool {
    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::StaleMemberEpoch)
}

/// The shutdown's commit of what the workers delivered. Asynchronous, then
/// polled until its callback arrives, by the shutdown deadline plus
/// `COMMIT_RETRY_FOR`: a synchronous commit here can wait for ever, because
/// when a rebalance is queued for this thread librdkafka holds the commit
/// until the application serves the rebalance, and the application is the
/// one waiting (seen in the chaos test: the replica then stayed in the group,
/// holding partitions nobody read). Messages polled meanwhile are dropped,
/// uncommitted.
pub(super) fn commit_at_shutdown(consumer: &Consumer_, offsets: &[(TopicPartition, i64)]) {
    if offsets.is_empty() {
        return;
    }
    let ctx = consumer.context();
    let tpl = offset_list(offsets);
    if let Err(e) = consumer.store_offsets(&tpl) {
        warn!(error = %e, "storing final offsets failed");
    }
    let before = ctx.commit_callbacks.load(Ordering::Relaxed);
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        error!(error = %e, "committing final offsets failed; what they cover will be redelivered");
        return;
    }
    let limit = ctx
        .shutdown_deadline
        .get()
        .copied()
        .unwrap_or_else(tokio::time::Instant::now)
        .max(tokio::time::Instant::now())
        + COMMIT_RETRY_FOR;
    // librdkafka does not always call back for an asynchronous manual
    // commit (its event API swallows the answer), so the commit is also
    // confirmed by reading the group's offsets back: without that, a clean
    // stop waited out the whole deadline.
    let mut confirmed = false;
    let mut last_read = std::time::Instant::now();
    while ctx.commit_callbacks.load(Ordering::Relaxed) == before
        && !confirmed
        && tokio::time::Instant::now() < limit
    {
        let _ = consumer.poll(Duration::from_millis(100));
        if last_read.elapsed() >= Duration::from_millis(300) {
            last_read = std::time::Instant::now();
            confirmed = consumer
                .committed_offsets(tpl.clone(), Duration::from_secs(1))
                .is_ok_and(|read| covers(&read, &tpl));
        }
    }
    if confirmed {
        info!(offsets = ?tpl.to_topic_map(), "final commit confirmed (read back from the group)");
    } else if ctx.commit_callbacks.load(Ordering::Relaxed) == before {
        error!(offsets = ?tpl.to_topic_map(), "no answer to the final commit by the deadline; what it covers may be redelivered");
    } else {
        info!(offsets = ?tpl.to_topic_map(), "final commit answered (see commits_total for its result)");
    }
}

/// How long a revocation's or shutdown's commit retries a transient error
/// (never past the shutdown deadline), and the pause between tries.
pub(super) const COMMIT_RETRY_FOR: Duration = Duration::from_secs(5);
pub(super) const COMMIT_RETRY_STEP: Duration = Duration::from_millis(250);

/// Stores the offsets that workers report as delivered.
pub(super) fn store_progress(
    consumer: &Consumer_,
    progress: &mut mpsc::UnboundedReceiver<Progress>,
) {
    let ctx = consumer.context();
    let mut latest: HashMap<TopicPartition, i64> = HashMap::new();
    {
        let workers = ctx.workers();
        while let Ok(p) = progress.try_recv() {
            // A report from an older incarnation of the partition's worker is stale.
            if workers
                .get(&p.tp)
                .is_some_and(|w| w.generation == p.generation)
            {
                // The last report wins: a worker's reports only go up, except
                // after its partition's log started again (`Frontier::rewind`).
                latest.insert(p.tp, p.next_offset);
            }
        }
    }
    if latest.is_empty() {
        return;
    }
    // Offsets below the last commit (the partition's log started again):
    // auto-commit only commits offsets past the committed one, so these are
    // committed explicitly.
    let mut rewound = TopicPartitionList::new();
    {
        let mut lag = ctx.lag.lock().expect("lag lock");
        for (tp, offset) in &latest {
            if lag.stored(tp, *offset) {
                let _ =
                    rewound.add_partition_offset(tp.topic(), tp.partition, Offset::Offset(*offset));
            }
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in &latest {
        let _ = tpl.add_partition_offset(tp.topic(), tp.partition, Offset::Offset(*offset));
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // Happens when a partition was revoked in between; its worker's final
        // offset was committed by the revocation itself.
        warn!(error = %e, "storing delivered offsets failed");
    }
    if rewound.count() > 0 {
        if let Err(e) = consumer.commit(&rewound, CommitMode::Async) {
            warn!(error = %e, "committing offsets below the last commit failed; retried at the next report");
        }
    }
}

/// Commits explicitly the stored offsets of partitions whose committed offset
/// is above them (their log started again; see `LagTracker::stored`).
pub(super) fn commit_behind(consumer: &Consumer_) {
    let behind = consumer
        .context()
        .lag
        .lock()
        .expect("lag lock")
        .commits_behind();
    if behind.is_empty() {
        return;
    }
    let tpl = offset_list(&behind);
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        warn!(error = %e, "committing offsets below the last commit failed; retried shortly");
    }
}

/// A list of topic-partitions at the given offsets, for a store or a commit.
pub(super) fn offset_list(offsets: &[(TopicPartition, i64)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, offset) in offsets {
        if let Err(e) = tpl.add_partition_offset(tp.topic(), tp.partition, Offset::Offset(*offset))
        {
            error!(topic = %tp.topic, partition = tp.partition, error = %e, "cannot build the offset list");
        }
    }
    tpl
}

/// Whether the group's committed offsets `read` are at or past every offset of `wanted`.
pub(super) fn covers(read: &TopicPartitionList, wanted: &TopicPartitionList) -> bool {
    wanted.elements().iter().all(|w| {
        let Offset::Offset(want) = w.offset() else {
            return true;
        };
        matches!(
            read.find_partition(w.topic(), w.partition()).map(|e| e.offset()),
            Some(Offset::Offset(got)) if got >= want
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_confirmed_only_when_every_partition_reads_back_at_or_past_it() {
        let wanted = offset_list(&[
            (TopicPartition::new("a", 0), 10),
            (TopicPartition::new("b", 0), 5),
        ]);
        let read = |a: i64, b: Option<i64>| {
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset("a", 0, Offset::Offset(a));
            match b {
                Some(b) => {
                    let _ = tpl.add_partition_offset("b", 0, Offset::Offset(b));
                }
                None => {
                    let _ = tpl.add_partition_offset("b", 0, Offset::Invalid);
                }
            }
            tpl
        };
        assert!(covers(&read(10, Some(5)), &wanted));
        assert!(covers(&read(12, Some(5)), &wanted));
        assert!(!covers(&read(9, Some(5)), &wanted));
        assert!(
            !covers(&read(10, None), &wanted),
            "another topic's partition not committed yet"
        );
    }
}

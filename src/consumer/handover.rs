//! Messages to the workers: handed over in chunks, paced while the workers
//! are busy, and partitions paused while their buffers are full.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;
use tracing::{info, warn};

use super::{Consumer_, Context};
use crate::partition::Message;
use crate::topic_partition::TopicPartition;

/// At most this many messages are polled before they are handed over.
pub(super) const HANDOVER_CHUNK: usize = 256;

/// Messages polled but not yet handed to their workers, per partition, with
/// the worker incarnation they were polled for.
#[derive(Default)]
pub(super) struct Handover {
    chunks: HashMap<TopicPartition, (u64, Vec<Message>)>,
    count: usize,
}

impl Handover {
    pub(super) fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(super) fn len(&self) -> usize {
        self.count
    }

    pub(super) fn push(&mut self, ctx: &Context, tp: TopicPartition, message: Message) {
        // A message of a partition this member does not own (any more) is
        // dropped, uncommitted: its owner reads it from the committed offset.
        let Some(generation) = ctx.workers().get(&tp).map(|w| w.generation) else {
            return;
        };
        let (chunk_generation, chunk) = self
            .chunks
            .entry(tp)
            .or_insert_with(|| (generation, Vec::new()));
        if *chunk_generation != generation {
            // The partition was revoked and assigned again in between: the
            // earlier messages belonged to the previous worker; drop them.
            self.count -= chunk.len();
            chunk.clear();
            *chunk_generation = generation;
        }
        chunk.push(message);
        self.count += 1;
    }

    /// Hands every chunk to its worker, if that worker is still the one the
    /// messages were polled for.
    pub(super) fn flush(&mut self, ctx: &Context) {
        if self.count == 0 {
            return;
        }
        let workers = ctx.workers();
        for (tp, (generation, chunk)) in self.chunks.iter_mut() {
            if chunk.is_empty() {
                continue;
            }
            let chunk = std::mem::take(chunk);
            match workers.get(tp) {
                Some(worker) if worker.generation == *generation => worker.send(chunk),
                _ => {}
            }
        }
        self.count = 0;
    }
}

/// The longest the consumer loop goes without polling while it paces a backlog.
pub(super) const MAX_PACING: Duration = Duration::from_millis(200);

/// True when a partition's worker slows the hand-over (see
/// [`Shared::slows_hand_over`]).
pub(super) fn workers_are_busy(ctx: &Context, max_buffered_bytes: usize) -> bool {
    let workers = ctx.workers();
    let quarter_share = max_buffered_bytes / workers.len().max(1) / 4;
    workers
        .values()
        .any(|w| w.shared.slows_hand_over(w.paused, quarter_share))
}

/// Pauses a partition whose buffered bytes pass its share of
/// `MAX_BUFFERED_BYTES`, or whose worker holds (blocked by `DLQ_POLICY=block`,
/// dead-letter writes failing); resumes it once it no longer holds and its
/// buffer is below half its share.
pub(super) fn apply_backpressure(consumer: &Consumer_, max_buffered_bytes: usize) {
    let ctx = consumer.context();
    let dead_letters = &ctx.deps.deliverer.dead_letters;
    let mut workers = ctx.workers();
    let share = max_buffered_bytes / workers.len().max(1);
    for (tp, worker) in workers.iter_mut() {
        let buffered = worker.shared.buffered_bytes();
        let holding = worker.shared.blocked.load(Ordering::Relaxed) || dead_letters.is_failing(tp);
        let change = pause_change(worker.paused, holding, buffered, share);
        let Some(pause) = change else { continue };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(tp.topic(), tp.partition);
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                worker.paused = pause;
                worker.shared.press(pause);
                let label = tp.partition.to_string();
                ctx.metrics
                    .partition_paused
                    .with_label_values(&[tp.topic(), label.as_str()])
                    .set(i64::from(pause));
                info!(
                    topic = %tp.topic,
                    partition = tp.partition,
                    buffered,
                    share,
                    holding,
                    paused = pause,
                    "partition {}",
                    match (pause, holding) {
                        (true, true) => "paused: blocked, or its dead-letter writes fail",
                        (true, false) => "paused: buffer full",
                        (false, _) => "resumed",
                    }
                );
            }
            Err(e) => {
                warn!(topic = %tp.topic, partition = tp.partition, error = %e, "pause/resume failed")
            }
        }
    }
}

/// Whether to pause (`Some(true)`) or resume (`Some(false)`) a partition:
/// pause when its worker holds or its buffer passes its share; resume only
/// when neither holds and the buffer is below half the share (hysteresis).
pub(super) fn pause_change(
    paused: bool,
    holding: bool,
    buffered: usize,
    share: usize,
) -> Option<bool> {
    if !paused && (holding || buffered > share) {
        Some(true)
    } else if paused && !holding && buffered < share / 2 {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_that_takes_no_more_messages_does_not_slow_the_hand_over_to_the_others() {
        let shared = crate::partition::Shared::default();
        shared.queued_bytes.store(1000, Ordering::Relaxed);
        assert!(shared.slows_hand_over(false, 999), "a busy worker paces");
        assert!(
            !shared.slows_hand_over(true, 999),
            "paused: its queue no longer grows"
        );
        assert!(
            !shared.slows_hand_over(false, 1000),
            "below a quarter of its share"
        );
        shared.saturated.store(true, Ordering::Relaxed);
        assert!(
            !shared.slows_hand_over(false, 999),
            "a saturated worker (a stuck lane) would pace the whole replica for as long as it is stuck"
        );
    }

    #[test]
    fn a_partition_pauses_when_full_or_holding_and_resumes_only_when_neither() {
        assert_eq!(pause_change(false, false, 100, 1000), None);
        assert_eq!(pause_change(false, false, 1001, 1000), Some(true));
        assert_eq!(pause_change(false, true, 0, 1000), Some(true));
        assert_eq!(
            pause_change(true, true, 0, 1000),
            None,
            "blocked stays paused"
        );
        assert_eq!(pause_change(true, false, 700, 1000), None, "hysteresis");
        assert_eq!(pause_change(true, false, 499, 1000), Some(false));
    }
}

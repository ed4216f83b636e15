//! The consumer loop's side of a partition worker: the messages it hands
//! over, the progress it receives, the state it reads without asking
//! (`Shared`) and the handle that stops the worker.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::topic_partition::TopicPartition;

/// A consumed message, owned, as the consumer loop hands it over.
#[derive(Debug)]
pub struct Message {
    pub offset: i64,
    /// Kafka timestamp (create or log-append time), ms since the epoch.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Bytes>,
    pub payload: Option<Bytes>,
}

impl Message {
    /// What the message costs in memory while queued: its key and payload.
    /// Once decoded, the message is dropped and its event, about as large as
    /// the payload, is what the batch holds; so the accounting stays steady as
    /// messages move from the queue into batches.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Bytes::len) + self.key.as_ref().map_or(0, Bytes::len)
    }
}

/// The worker's delivered frontier moved: `next_offset` is safe to commit.
#[derive(Debug, Clone)]
pub struct Progress {
    pub tp: TopicPartition,
    /// Which incarnation of the partition's worker sent it; stale ones are ignored.
    pub generation: u64,
    pub next_offset: i64,
}

/// State the consumer loop reads without talking to the worker.
#[derive(Debug)]
pub struct Shared {
    /// Bytes handed to the worker but not yet taken from its channel.
    pub queued_bytes: AtomicUsize,
    /// Bytes in the open batch, in sealed batches and in flight.
    pub batch_bytes: AtomicUsize,
    /// Kafka timestamp of the oldest undelivered event; `i64::MIN` when none.
    pub oldest_pending_ts_ms: AtomicI64,
    /// One past the offset of the last message the worker took; `i64::MIN` before the first.
    pub consumed_next: AtomicI64,
    /// Unix ms of the worker loop's last turn. The loop turns at least every
    /// second, even while a delivery waits, unless it is deadlocked or starved.
    pub heartbeat_ms: AtomicI64,
    /// Counts batches delivered and dead letters acknowledged: it moves
    /// whenever the partition makes progress (see `ops::stall`).
    pub completions: AtomicU64,
    /// True while a batch is being delivered (or retried) or a dead letter
    /// written: the partition is waiting on the webhook or Kafka, not stalled.
    pub waiting: AtomicBool,
    /// Set under `DLQ_POLICY=block` once a message could not be delivered:
    /// the worker takes no more messages and the consumer keeps the
    /// partition paused until the operator acts.
    pub blocked: AtomicBool,
    /// Set while the consumer keeps the partition paused (its buffer is
    /// full, or its worker holds): no more messages come until it resumes, so
    /// the worker seals its open batches at once rather than at their linger
    /// time (see [`Shared::press`]).
    pub pressed: AtomicBool,
    /// Wakes the worker when `pressed` is set.
    pub pressure: tokio::sync::Notify,
    /// Set while the worker takes no more messages because a lane, or the
    /// partition, has as many units pending as it may
    /// (`PartitionState::is_saturated`).
    pub saturated: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            queued_bytes: AtomicUsize::new(0),
            batch_bytes: AtomicUsize::new(0),
            oldest_pending_ts_ms: AtomicI64::new(i64::MIN),
            heartbeat_ms: AtomicI64::new(Utc::now().timestamp_millis()),
            consumed_next: AtomicI64::new(i64::MIN),
            completions: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            pressed: AtomicBool::new(false),
            pressure: tokio::sync::Notify::new(),
            saturated: AtomicBool::new(false),
        }
    }
}

impl Shared {
    /// The consumer paused (`true`) or resumed (`false`) the partition; a
    /// pause wakes the worker.
    pub fn press(&self, pressed: bool) {
        self.pressed.store(pressed, Ordering::Relaxed);
        if pressed {
            self.pressure.notify_one();
        }
    }

    /// True when the consumer loop should hand over no more for a moment:
    /// the partition still fetches and a quarter of its share of
    /// `MAX_BUFFERED_BYTES` (`quarter_share`) waits to be decoded, so more
    /// would only fill its queue up to the pause threshold. A partition that
    /// is paused, or whose worker takes nothing (a lane saturated behind a
    /// stuck one), does not count: its queue fills to the pause threshold on
    /// its own, and a stalled webhook must not hold the others back.
    pub fn slows_hand_over(&self, paused: bool, quarter_share: usize) -> bool {
        !paused
            && !self.saturated.load(Ordering::Relaxed)
            && self.queued_bytes.load(Ordering::Relaxed) > quarter_share
    }

    pub fn buffered_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed) + self.batch_bytes.load(Ordering::Relaxed)
    }
    /// True when the worker loop has not turned for `stall_ms`.
    pub fn is_stalled(&self, now_ms: i64, stall_ms: i64) -> bool {
        now_ms - self.heartbeat_ms.load(Ordering::Relaxed) > stall_ms
    }
    pub fn consumed_next(&self) -> Option<i64> {
        match self.consumed_next.load(Ordering::Relaxed) {
            i64::MIN => None,
            offset => Some(offset),
        }
    }
    pub fn oldest_pending_ts_ms(&self) -> Option<i64> {
        match self.oldest_pending_ts_ms.load(Ordering::Relaxed) {
            i64::MIN => None,
            ts => Some(ts),
        }
    }
}

/// The consumer loop's handle on a running worker.
pub struct Handle {
    pub generation: u64,
    pub shared: Arc<Shared>,
    /// Whether the consumer paused fetching for this partition.
    pub paused: bool,
    pub(super) messages: mpsc::UnboundedSender<Vec<Message>>,
    pub(super) drain: Option<oneshot::Sender<Instant>>,
    pub(super) abort: CancellationToken,
    pub(super) join: JoinHandle<Option<i64>>,
}

impl Handle {
    /// Hands messages (in offset order) to the worker. Never blocks: memory
    /// is bounded by pausing the partition when its buffer is full, so the
    /// consumer loop keeps polling.
    pub fn send(&self, messages: Vec<Message>) {
        let bytes = messages.iter().map(Message::size).sum();
        self.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        // A closed channel means the worker has stopped; the messages stay uncommitted.
        let _ = self.messages.send(messages);
    }

    /// Asks the worker to finish by `deadline` and returns its last safe
    /// offset (one past the last delivered message), if it has one.
    pub fn stop(mut self, deadline: Instant) -> impl std::future::Future<Output = Option<i64>> {
        if let Some(drain) = self.drain.take() {
            let _ = drain.send(deadline);
        }
        let abort = self.abort.clone();
        async move {
            // The worker honours the deadline itself; the extra second covers a
            // task that cannot be scheduled in time.
            match tokio::time::timeout_at(
                deadline + std::time::Duration::from_secs(1),
                &mut self.join,
            )
            .await
            {
                Ok(result) => result.ok().flatten(),
                Err(_) => {
                    abort.cancel();
                    self.join.await.ok().flatten()
                }
            }
        }
    }

    /// Stops the worker at once, without waiting for deliveries (lost partitions).
    pub fn abort(self) {
        self.abort.cancel();
    }
}
